"""Sampler throughput: sampling.generate vs HF transformers generate (PyTorch), side by side.

    .venv/bin/python bench/sampler.py                 # tiny and llama_100m
    .venv/bin/python bench/sampler.py --models tiny --repeats 5

Identical weights (our model saved with hf.save_hf, loaded by LlamaForCausalLM), prompts
(batch 16, left-padded, lengths 8..32) and settings (temperature 0.8, top-p 0.9, repetition
penalty 1.1, exactly 64 new tokens forced by min_new_tokens = max_new_tokens = 64 on both sides).
Reports generated tokens/s after compile (best of --repeats), and JAX's compile time separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,llama_100m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan_layers", type=int, default=-1, help="-1: preset default")
    args = ap.parse_args()

    import jax
    import torch
    import transformers

    from metarm_jax import sampling
    from metarm_jax.models import hf, llama

    print(f"load average before: {os.getloadavg()}")
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} devices), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs"
    )
    settings = dict(temperature=0.8, top_p=0.9, top_k=0, repetition_penalty=1.1)
    b, n_new = args.batch, args.new_tokens
    rows = []
    for name in args.models.split(","):
        cfg = llama.preset(name)
        if args.scan_layers >= 0:
            cfg = cfg.replace(scan_layers=bool(args.scan_layers))
        model = llama.create(cfg, "lm", seed=0)
        rs = np.random.RandomState(0)
        lengths = rs.randint(8, 33, size=b)
        width = int(lengths.max())
        ids = np.zeros((b, width), np.int64)
        mask = np.zeros((b, width), np.int64)
        for i, n in enumerate(lengths):
            ids[i, width - n :] = rs.randint(3, cfg.vocab_size, n)
            mask[i, width - n :] = 1

        def run_jax(seed):
            out = sampling.generate(
                model,
                ids,
                mask,
                seed,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                num_samples=1,
                **settings,
            )
            jax.block_until_ready(out.tokens)
            return out

        t0 = time.perf_counter()
        out = run_jax(0)
        first = time.perf_counter() - t0

        with tempfile.TemporaryDirectory() as d:
            hf.save_hf(model, d)
            tm = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tid, tmask = torch.tensor(ids), torch.tensor(mask)

        def run_hf(seed):
            torch.manual_seed(seed)
            with torch.inference_mode():
                return tm.generate(
                    tid,
                    attention_mask=tmask,
                    do_sample=True,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,
                    pad_token_id=0,
                    eos_token_id=cfg.eos_token_id,
                    **settings,
                )

        run_hf(0)  # warm-up
        # Alternate the two so that load from other processes hits both alike.
        jax_times, hf_times = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = run_jax(r + 1)
            jax_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            g = run_hf(r + 1)
            hf_times.append(time.perf_counter() - t0)
        assert int(np.asarray(out.mask).sum()) == b * n_new, "JAX did not emit all tokens"
        assert g.shape[1] - width == n_new, "HF did not emit all tokens"
        compile_s = first - min(jax_times)

        tok = b * n_new
        jt, ht = tok / min(jax_times), tok / min(hf_times)
        rows.append((name, cfg.num_params(), jt, ht, jt / ht, compile_s))
        print(
            f"{name}: jax {jt:,.0f} tok/s ({min(jax_times):.3f}s), HF {ht:,.0f} tok/s "
            f"({min(hf_times):.3f}s), speed-up {jt / ht:.2f}x, jax compile {compile_s:.1f}s",
            flush=True,
        )

    print(f"load average after: {os.getloadavg()}")
    print("\n| model | params | JAX tok/s | HF tok/s | speed-up | JAX compile (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, p, jt, ht, s, c in rows:
        print(f"| {name} | {p / 1e6:.1f}M | {jt:,.0f} | {ht:,.0f} | {s:.2f}x | {c:.1f} |")


if __name__ == "__main__":
    main()
