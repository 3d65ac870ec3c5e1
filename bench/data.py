"""Data-side throughput: read + parse, tokenize, and batch the shared HH sample on this CPU.

  python bench/data.py [--tokenizer DIR] [--max_length 512] [--batch 16] [--epochs 3]

Without --tokenizer it trains a byte-level BPE (vocab 8000) on the sample first (not timed).
Prints examples/s and tokens/s per stage and end to end. A MetaRM step consumes one preference
batch (n pairs = 2n sequences) and one meta batch (m x k sequences); compare the printed
sequences/s with (2n + m*k) / step_time of the model side.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


from metarm_jax.config import defaults
from metarm_jax.data import (
    DataSource,
    TokenSpec,
    load,
    load_tokenizer,
    make_iter_dataset,
    tokenize_pairs,
    train_bpe_tokenizer,
)
from metarm_jax.data.features import CollatePairs


def main():
    ap = argparse.ArgumentParser()
    shared = pathlib.Path(
        os.environ.get("METARM_SHARED_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared")
    )
    ap.add_argument("--path", default=str(shared / "data/hh-rlhf/harmless-base/test.jsonl.gz"))
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    if not os.path.exists(a.path):
        sys.exit(f"missing {a.path} (set METARM_SHARED_DIR)")

    t0 = time.perf_counter()
    pairs = load("preference", DataSource.of("hh_rlhf", a.path, split="test"))
    t_read = time.perf_counter() - t0
    tok = (
        load_tokenizer(a.tokenizer)
        if a.tokenizer
        else train_bpe_tokenizer([p.prompt + p.chosen for p in pairs], 8000, tempfile.mkdtemp())
    )

    cfg = defaults.data()
    cfg.max_length = a.max_length
    cfg.bucket_lengths = tuple(b for b in (128, 256) if b < a.max_length)
    spec = TokenSpec.from_config(cfg, tok)
    t0 = time.perf_counter()
    feats = tokenize_pairs(pairs, tok, spec)
    t_tok = time.perf_counter() - t0
    real_tokens = sum(len(f["chosen"]) + len(f["rejected"]) for f in feats)

    ds = make_iter_dataset(
        feats,
        CollatePairs(spec),
        batch_size=a.batch,
        seed=0,
        num_epochs=a.epochs,
        shard_index=0,
        shard_count=1,
        num_threads=cfg.num_threads,
    )
    t0 = time.perf_counter()
    n_batches, padded = 0, 0
    for b in ds:
        n_batches += 1
        padded += b["chosen_ids"].size + b["rejected_ids"].size
    t_batch = time.perf_counter() - t0
    n_batched = n_batches * a.batch

    print(
        f"sample: {len(pairs)} pairs kept of {pairs.skip_report.total} rows; "
        f"{len(feats)} after tokenization (max_length {a.max_length}, vocab {len(tok)})"
    )
    print(f"read+parse : {len(pairs) / t_read:10.0f} pairs/s   ({t_read:.2f} s, incl. datasets)")
    print(
        f"tokenize   : {len(feats) / t_tok:10.0f} pairs/s   {real_tokens / t_tok:12.0f} tokens/s "
        f"({t_tok:.2f} s)"
    )
    print(
        f"batch      : {n_batched / t_batch:10.0f} pairs/s   {padded / t_batch:12.0f} padded "
        f"tokens/s ({n_batches} batches of {a.batch}, {a.epochs} epochs, {t_batch:.2f} s)"
    )
    e2e = len(feats) / (t_read + t_tok + t_batch / a.epochs)
    print(
        f"end to end (1 epoch): {e2e:.0f} pairs/s = {2 * e2e:.0f} sequences/s; padding "
        f"efficiency {real_tokens * a.epochs / padded:.0%}"
    )
    steady = 2 * n_batched / t_batch
    print(
        "assumption: a MetaRM step of the tiny config consumes 2n + m*k = 112 sequences "
        "(n = m = 16, k = 5)."
    )
    print(
        f"  steady state (tokens cached at load, as in training): {steady:.0f} sequences/s -> 20x "
        f"headroom for any step slower than {112 * 20 / steady * 1e3:.0f} ms"
    )
    print(
        f"  including the one-time load: {2 * e2e:.0f} sequences/s -> 20x headroom for steps "
        f"slower than {112 * 20 / (2 * e2e) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
