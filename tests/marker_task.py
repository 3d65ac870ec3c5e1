"""The marker task: a tiny learnable preference task made of token ids, for the RM-stage tests
(no tokenizer, no data files; the RM stages take it through their ``data=`` argument).

Sequences (vocab >= 256, right-padded to `seq_len`, pad 0):  BOS prompt response EOS
  prompt      6 tokens from [10, 60)
  response    4..seq_len-9 tokens from [60, 160) (training pairs); the *shifted* meta set draws a
              `shift` fraction of its response tokens from [160, 256) instead
  chosen      its response contains the MARKER token (3) at a random place; rejected does not
So the true preference is "has the marker"; a 2-layer model learns it in a few hundred steps.
Meta examples: one prompt with k shifted responses, each with exactly one marker: the shifted
policy has saturated the coarse property, so its responses differ only in what the pairs teach
weakly (the paper's premise). Some prompts have k-1 real responses (sample_mask 0 for
the last), to exercise masking.
"""

from __future__ import annotations

import grain
import numpy as np

PAD, BOS, EOS, MARKER = 0, 1, 2, 3
PROMPT_LEN = 6


def _response(rng: np.random.Generator, length: int, shift: float) -> np.ndarray:
    base = rng.integers(60, 160, size=length)
    shifted = rng.integers(160, 256, size=length)
    return np.where(rng.random(length) < shift, shifted, base)


def _sequence(
    prompt: np.ndarray, response: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    seq = np.concatenate([[BOS], prompt, response, [EOS]])[:seq_len]
    ids = np.zeros(seq_len, np.int32)
    ids[: len(seq)] = seq
    mask = (np.arange(seq_len) < len(seq)).astype(np.int32)
    return ids, mask


def _with_markers(rng, response: np.ndarray, count: int) -> np.ndarray:
    response = response.copy()
    for pos in rng.choice(len(response), size=min(count, len(response)), replace=False):
        response[pos] = MARKER
    return response


def preference_arrays(num: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """{chosen_ids, chosen_mask, rejected_ids, rejected_mask}: [num, seq_len] int32."""
    if seq_len < 14:
        raise ValueError(f"synthetic task needs seq_len >= 14, got {seq_len}.")
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
    for _ in range(num):
        prompt = rng.integers(10, 60, size=PROMPT_LEN)
        length = int(rng.integers(4, seq_len - PROMPT_LEN - 2))
        chosen = _with_markers(rng, _response(rng, length, 0.0), 1)
        rejected = _response(rng, length, 0.0)
        for side, resp in (("chosen", chosen), ("rejected", rejected)):
            ids, mask = _sequence(prompt, resp, seq_len)
            out[f"{side}_ids"].append(ids)
            out[f"{side}_mask"].append(mask)
    return {k: np.stack(v) for k, v in out.items()}


def meta_arrays(
    num_prompts: int, k: int, seq_len: int, seed: int, shift: float = 1.0
) -> dict[str, np.ndarray]:
    """{input_ids, attention_mask: [m, k, T] int32, sample_mask: [m, k] int32}."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((num_prompts, k, seq_len), np.int32)
    mask = np.zeros((num_prompts, k, seq_len), np.int32)
    sample_mask = np.ones((num_prompts, k), np.int32)
    for p in range(num_prompts):
        prompt = rng.integers(10, 60, size=PROMPT_LEN)
        real = k - 1 if rng.random() < 0.2 else k
        sample_mask[p, real:] = 0
        for i in range(k):
            if i >= real:  # padding sample: BOS only, never scored
                ids[p, i, 0], mask[p, i, 0] = BOS, 1
                continue
            length = int(rng.integers(4, seq_len - PROMPT_LEN - 2))
            resp = _with_markers(rng, _response(rng, length, shift), 1)
            ids[p, i], mask[p, i] = _sequence(prompt, resp, seq_len)
    return {"input_ids": ids, "attention_mask": mask, "sample_mask": sample_mask}


def batches(
    arrays: dict[str, np.ndarray],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
) -> grain.DatasetIterator:
    """A checkpointable grain iterator of {key: [batch_size, ...]} numpy batches."""
    n = len(next(iter(arrays.values())))
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(lambda i: {k: v[i] for k, v in arrays.items()})
    return iter(ds.batch(batch_size, drop_remainder=True).to_iter_dataset())


def stage_data(
    config,
    with_meta: bool,
    *,
    num_train: int = 512,
    num_val: int = 128,
    num_meta: int = 64,
    seq_len: int = 24,
    shift: float = 1.0,
):
    """The RM stages' data (``train.common.StageData``) on the marker task; seeds from
    ``config.data.pref_seed`` / ``meta_seed``, k from ``config.meta.k``."""
    from metarm_jax.train.common import StageData

    d, k = config.data, config.meta.k
    pref = preference_arrays(num_train, seq_len, seed=d.pref_seed)
    val = preference_arrays(num_val, seq_len, seed=d.pref_seed + 1000)
    meta_eval = meta_arrays(num_meta, k, seq_len, seed=d.meta_seed + 1000, shift=shift)
    train = {"pref": batches(pref, d.pref_batch_size, seed=d.pref_seed)}
    if with_meta:
        meta = meta_arrays(num_meta, k, seq_len, seed=d.meta_seed, shift=shift)
        train["meta"] = batches(meta, d.meta_batch_size, seed=d.meta_seed)
    return StageData(
        train=train,
        num_examples=num_train,
        val=lambda: batches(val, d.pref_batch_size, shuffle=False, repeat=False),
        meta_eval=lambda: batches(meta_eval, d.meta_batch_size, shuffle=False, repeat=False),
    )
