"""The synthetic world's files (``docs/synthetic.md``, "Files"): its tokenizer, the HH-format
files the data readers load (``write_world``), and the builders of gold-ordered preference rows
(the oracle's data, the learnability probe's). The world itself -- prompts, samplers, the gold
reward, labels -- is ``metarm_jax/data/synthetic.py``."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from metarm_jax.data.formats import ASSISTANT, HUMAN
from metarm_jax.data.synthetic import (
    _SPACE,
    ASSISTANT_ID,
    BOS,
    BOS_ID,
    EOS,
    EOS_ID,
    FIRST_SYMBOL_ID,
    HUMAN_ID,
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    World,
)
from metarm_jax.runtime import fileio

# ------------------------------------------------------------------------------------------------
# The tokenizer.


def world_tokenizer(out_dir: str, world: World | None = None):
    """Writes the world's HF tokenizer to `out_dir` (save_pretrained) and returns it loaded.

    A `tokenizers` WordLevel model over exactly <pad> <s> </s> <unk>, the HH markers and the
    symbols. The markers '\\n\\nHuman:' / '\\n\\nAssistant:' are added tokens (matched before
    pre-tokenization, one id each); the rest is split at spaces by Metaspace, so ' w03' and 'w03'
    are both the one token '\u2581w03'. decode(encode(t)) == t for world text that does not
    start with a space (a reply ' w03 w04' decodes to 'w03 w04'; hh_reply adds the space back).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    world = world or World()
    vocab = {
        PAD: PAD_ID,
        BOS: BOS_ID,
        EOS: EOS_ID,
        UNK: UNK_ID,
        HUMAN: HUMAN_ID,
        ASSISTANT: ASSISTANT_ID,
    }
    for i, s in enumerate(world.symbols):
        vocab[_SPACE + s] = FIRST_SYMBOL_ID + i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always")
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (PAD, BOS, EOS, UNK)]
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (HUMAN, ASSISTANT)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    loaded = AutoTokenizer.from_pretrained(out_dir)
    if len(loaded) != world.vocab_size:
        raise AssertionError(
            f"{out_dir}: tokenizer has {len(loaded)} ids, expected {world.vocab_size}."
        )
    return loaded


# ------------------------------------------------------------------------------------------------
# Files.


def hh_transcript(prompt: str, response: str) -> str:
    """'\\n\\nHuman: <prompt>\\n\\nAssistant: <response>' (the hh_rlhf row format)."""
    return f"{HUMAN} {prompt}{ASSISTANT} {response}"


# Independent random streams per artifact: changing one size does not change the others.
_STREAMS = {
    "eval_prompts": 1,
    "ood_prompts": 2,
    "train_prompts": 3,
    "sft": 4,
    "train_pairs": 5,
    "test_pairs": 6,
    "valid_prompts": 7,
    "ood_train_prompts": 8,
}


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def _distinct_pair(world, rng, prompts):
    """Two base responses per prompt that differ (the HH reader skips identical transcripts)."""
    a = world.sample_responses(rng, prompts)
    b = world.sample_responses(rng, prompts)
    for i, p in enumerate(prompts):
        while np.array_equal(a[i], b[i]):
            b[i] = world.sample_responses(rng, [p])[0]
    return a, b


def write_world(out_dir: str, cfg: ml_collections.ConfigDict | None = None) -> dict[str, str]:
    """Writes the world's files under out_dir; returns {name: path}. Deterministic in cfg.seed.

    tokenizer/              world_tokenizer (data.tokenizer_path)
    sft/train.jsonl         hh_rlhf rows: chosen = prompt + one base response (the SFT target),
                            rejected = another base response (only there for the HH schema)
    pairs/train.jsonl       hh_rlhf preference rows, BT-labelled, base responses; the extra
    pairs/test.jsonl        fields gold_chosen / gold_rejected are for analysis (readers ignore)
    prompts/train.jsonl     {"prompt": "w01 w02 ..."}: roll-out / meta-sampling prompts
    prompts/test.jsonl      held-out prompts (judges); disjoint from every other prompt file
    prompts/valid.jsonl     held-out prompts that choose the best round; disjoint likewise
    prompts_ood/test.jsonl  shifted-distribution prompts; disjoint from the rest
    prompts_ood/train.jsonl shifted-distribution training prompts (the OOD setting's meta samples
                            and PPO); disjoint from every other prompt file
    world.json              the config and summary figures
    """
    world = World(cfg)
    cfg = world.cfg
    paths = {
        "tokenizer": os.path.join(out_dir, "tokenizer"),
        "sft_train": os.path.join(out_dir, "sft", "train.jsonl"),
        "pairs_train": os.path.join(out_dir, "pairs", "train.jsonl"),
        "pairs_test": os.path.join(out_dir, "pairs", "test.jsonl"),
        "prompts_train": os.path.join(out_dir, "prompts", "train.jsonl"),
        "prompts_eval": os.path.join(out_dir, "prompts", "test.jsonl"),
        "prompts_valid": os.path.join(out_dir, "prompts", "valid.jsonl"),
        "prompts_ood": os.path.join(out_dir, "prompts_ood", "test.jsonl"),
        "prompts_ood_train": os.path.join(out_dir, "prompts_ood", "train.jsonl"),
        "world": os.path.join(out_dir, "world.json"),
    }
    world_tokenizer(paths["tokenizer"], world)

    held_out: set[str] = set()
    eval_prompts = world.sample_prompts(
        _rng(cfg.seed, "eval_prompts"), cfg.num_eval_prompts, exclude=held_out
    )
    ood_prompts = world.sample_prompts(
        _rng(cfg.seed, "ood_prompts"), cfg.num_ood_prompts, ood=True, exclude=held_out
    )
    valid_prompts = world.sample_prompts(
        _rng(cfg.seed, "valid_prompts"), cfg.num_valid_prompts, exclude=held_out
    )
    train_prompts = world.sample_prompts(
        _rng(cfg.seed, "train_prompts"), cfg.num_train_prompts, exclude=set(held_out)
    )
    # drawn last, from its own stream: the other files do not change with its size
    ood_train = world.sample_prompts(
        _rng(cfg.seed, "ood_train_prompts"),
        cfg.num_ood_train_prompts,
        ood=True,
        exclude=set(held_out) | {world.render(p) for p in train_prompts},
    )
    for name, ps in (
        ("prompts_ood_train", ood_train),
        ("prompts_train", train_prompts),
        ("prompts_eval", eval_prompts),
        ("prompts_valid", valid_prompts),
        ("prompts_ood", ood_prompts),
    ):
        fileio.write_jsonl(paths[name], [{"prompt": world.render(p)} for p in ps])

    rng = _rng(cfg.seed, "sft")
    sft_prompts = world.sample_prompts(rng, cfg.num_sft, exclude=set(held_out))
    a, b = _distinct_pair(world, rng, sft_prompts)
    fileio.write_jsonl(
        paths["sft_train"],
        [
            {
                "chosen": hh_transcript(world.render(x), world.render(y)),
                "rejected": hh_transcript(world.render(x), world.render(z)),
            }
            for x, y, z in zip(sft_prompts, a, b)
        ],
    )

    stats = {}
    for split in ("train", "test"):
        rng = _rng(cfg.seed, f"{split}_pairs")
        n = cfg.num_train_pairs if split == "train" else cfg.num_test_pairs
        world_rows, agree = _pair_rows(world, rng, n, held_out)
        fileio.write_jsonl(paths[f"pairs_{split}"], world_rows)
        stats[f"pairs_{split}_label_gold_agreement"] = round(float(agree), 4)
    with open(paths["world"], "w", encoding="utf-8") as f:
        json.dump(
            {
                "config": cfg.to_dict(),
                "vocab_size": world.vocab_size,
                "max_gold": world.max_gold,
                **stats,
            },
            f,
            indent=1,
            default=list,
        )
    return paths


def _pair_rows(world, rng, n, held_out):
    """n BT-labelled HH rows on training-distribution prompts (none held out), base responses.

    Returns (rows, fraction of rows whose chosen side has the higher gold reward).
    """
    prompts = world.sample_prompts(rng, n, exclude=set(held_out))
    a, b = _distinct_pair(world, rng, prompts)
    a_wins, _ = world.label_pairs(prompts, a, b, rng)
    ga, gb = world.gold(prompts, a), world.gold(prompts, b)
    rows, agree = [], 0
    for i, x in enumerate(prompts):
        w, l, gw, gl = (a[i], b[i], ga[i], gb[i]) if a_wins[i] else (b[i], a[i], gb[i], ga[i])
        text = world.render(x)
        rows.append(
            {
                "chosen": hh_transcript(text, world.render(w)),
                "rejected": hh_transcript(text, world.render(l)),
                "gold_chosen": round(float(gw), 6),
                "gold_rejected": round(float(gl), 6),
            }
        )
        agree += bool(gw > gl)
    return rows, agree / max(n, 1)


def gold_pairs(world: World, examples) -> list[dict]:
    """hh_rlhf preference rows from (prompt, [response, ...]) examples: every pair of a prompt's
    responses whose gold rewards differ, the higher-gold one chosen (the oracle RM's data).
    Responses that are empty or hold an HH marker are left out (see below)."""
    rows = []
    for prompt, responses in examples:
        # An empty reply is not a response, and one holding an HH marker (a policy can sample the
        # marker tokens) cannot be told from a second turn in a transcript: both are left out.
        responses = [r for r in responses if r.strip() and HUMAN not in r and ASSISTANT not in r]
        if len(responses) < 2:
            continue
        g = world.gold([prompt] * len(responses), responses)
        text = [r if r[:1].isspace() else " " + r for r in responses]  # "Assistant: w01 ..."
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if g[i] == g[j] or responses[i] == responses[j]:
                    continue
                hi, lo = (i, j) if g[i] > g[j] else (j, i)
                rows.append(
                    {
                        "chosen": prompt + text[hi],
                        "rejected": prompt + text[lo],
                        "gold_chosen": float(g[hi]),
                        "gold_rejected": float(g[lo]),
                    }
                )
    return rows


def saturated_pairs(
    world: World, rng: np.random.Generator, n: int, exclude: set[str]
) -> list[dict]:
    """Up to n hh_rlhf rows ordered exactly by gold (ties dropped) on training-distribution
    prompts (none in ``exclude``) with coarse-saturated responses (good fraction ~
    U(world.saturated_good_frac), fine fraction ~ U(world.saturated_fine_frac)): the pairs on
    which the world's subtle part decides, for the learnability probe (docs/synthetic.md)."""
    c = world.cfg
    prompts = world.sample_prompts(rng, n, exclude=exclude)
    kw = dict(good_frac=tuple(c.saturated_good_frac), fine_frac=tuple(c.saturated_fine_frac))
    a, b = world.sample_responses(rng, prompts, **kw), world.sample_responses(rng, prompts, **kw)
    ga, gb = world.gold(prompts, a), world.gold(prompts, b)
    rows = []
    for i, x in enumerate(prompts):
        if abs(ga[i] - gb[i]) < 1e-9:
            continue
        w, l = (a[i], b[i]) if ga[i] > gb[i] else (b[i], a[i])
        text = world.render(x)
        rows.append(
            {
                "chosen": hh_transcript(text, world.render(w)),
                "rejected": hh_transcript(text, world.render(l)),
            }
        )
    return rows


def pair_texts(rows: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) of hh_rlhf rows (``saturated_pairs``, the world's pair files):
    the prompt up to and including the last Assistant marker, and each side's response after it;
    a row whose ``gold_chosen`` is not above its ``gold_rejected`` is swapped, so chosen is the
    higher-gold side."""
    ps, cs, rs = [], [], []
    for row in rows:
        if "gold_chosen" in row and row["gold_chosen"] <= row["gold_rejected"]:
            row = dict(row, chosen=row["rejected"], rejected=row["chosen"])
        p, marker, c = row["chosen"].rpartition(ASSISTANT)
        ps.append(p + marker)
        cs.append(c)
        rs.append(row["rejected"].rpartition(ASSISTANT)[2])
    return ps, cs, rs
