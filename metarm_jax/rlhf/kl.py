"""KL(π ‖ π_SFT) of a policy, estimated from its own samples, for the frontier of gold and proxy
reward against √KL (Gao et al. 2022).

One response per prompt is drawn from π at temperature 1 with no top-p, top-k or repetition
penalty (so the draw IS from π), and its log-probability under π (the sampler's own
``model_logprobs``) and under π_SFT (one forward) are summed over its tokens in token space;
KL = E_{y ~ π}[log π(y|x) − log π_SFT(y|x)], estimated per prompt by that one sample (unbiased;
a single estimate can be negative, its mean over prompts rarely is). The result is cached in a
small JSON file, so a resumed report does not sample again.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from metarm_jax import data as D
from metarm_jax import models
from metarm_jax import sharding as shd
from metarm_jax.data.features import CollatePrompts, TokenSpec, tokenize_prompts
from metarm_jax.data.records import PromptExample, Source
from metarm_jax.generation import sampling
from metarm_jax.runtime import fileio
from metarm_jax.train.rollout import response_logprobs


def estimate(
    config, mesh, policy_path: str, sft_path: str, prompts: list[str], seed: int, out_path: str
) -> np.ndarray:
    """Per-prompt KL estimates [len(prompts)] of the policy at ``policy_path`` from π_SFT."""
    if os.path.exists(out_path):
        with open(out_path) as f:
            return np.asarray(json.load(f)["kl"], np.float64)
    record = {"policy": policy_path, "ref": sft_path, "seed": seed}
    if os.path.abspath(policy_path) == os.path.abspath(sft_path):
        kl = np.zeros(len(prompts))
    else:
        kl, sample = _sample_kl(config, mesh, policy_path, sft_path, prompts, seed)
        record.update(sample)  # the draws themselves, so the estimate can be checked
    if jax.process_index() == 0:
        fileio.write_json(out_path, {**record, "kl": kl.tolist()})
    return kl


def _sample_kl(config, mesh, policy_path, sft_path, prompts, seed) -> tuple[np.ndarray, dict]:
    """(per-prompt KL, the sampled token ids of prompt and response per prompt)."""
    tok = D.load_tokenizer(config.data.tokenizer_path)
    spec = TokenSpec.from_config(config.data, tok)
    recs = [PromptExample(p, Source("samples", "", i)) for i, p in enumerate(prompts)]
    batch = CollatePrompts(spec)(list(tokenize_prompts(recs, tok, spec)))
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    sc = config.sampling
    pad = int(tok.pad_token_id)
    width = sampling.bucket_length(int((mask > 0).sum(1).max()), int(sc.prompt_bucket_min))
    ids, mask = sampling.left_pack(ids, mask, width, pad)  # as generate packs them
    policy = models.from_config(config.model, "lm", mesh, path=policy_path, seed=config.seed)
    # π itself: temperature 1, no top-p / top-k / repetition penalty (the rest as configured)
    plain = sampling.settings(sc, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
    out = sampling.generate(
        policy,
        ids,
        mask,
        jax.random.key(seed),
        plain,
        num_samples=1,
        eos_id=int(tok.eos_token_id),
        pad_id=pad,
        mesh=mesh,
    )
    tokens, rmask, logp = (shd.to_host(x) for x in (out.tokens, out.mask, out.model_logprobs))
    del policy
    sft = models.from_config(config.model, "lm", mesh, path=sft_path, seed=config.seed)
    apply, params, *_ = models.split(sft)
    n = tokens.shape[1]
    seq = jnp.asarray(np.concatenate([ids, tokens], 1))
    seq_mask = jnp.asarray(np.concatenate([mask, rmask], 1))
    ref, _ = jax.jit(lambda p, i, m: response_logprobs(apply, p, i, m, n))(params, seq, seq_mask)
    ref = shd.to_host(ref)  # its global value on every process (a pod: an all-gather)
    kl = ((logp - ref) * rmask).sum(-1).astype(np.float64)
    sample = {
        "prompt_ids": [[int(t) for t, m in zip(r, k) if m] for r, k in zip(ids, mask)],
        "response_ids": [[int(t) for t, m in zip(r, k) if m] for r, k in zip(tokens, rmask)],
    }
    return kl, sample
