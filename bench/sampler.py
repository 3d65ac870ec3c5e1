"""Sampler throughput: sampling.generate vs HF transformers generate (PyTorch), side by side.

    .venv/bin/python bench/sampler.py                 # tiny and llama_100m
    .venv/bin/python bench/sampler.py --models tiny --repeats 5
    .venv/bin/python bench/sampler.py --models smollm2  # SmolLM2-135M-Instruct's real weights

``smollm2`` loads the converted checkpoint (``python -m metarm_jax.models.pretrained``; its
directory is $METARM_SMOL_DIR, default runs/smollm2-135m); any other name is a random preset.

Identical weights (our model saved with hf.save_hf, loaded by LlamaForCausalLM), prompts
(batch 16, left-padded, lengths 8..32) and settings (temperature 0.8, top-p 0.9, repetition
penalty 1.1, exactly 64 new tokens forced by min_new_tokens = max_new_tokens = 64 on both sides).
Reports generated tokens/s after compile (best of --repeats), and JAX's compile time separately.

Roofline, measured in the same run: the decode step's weight matmuls alone (every layer's q, k,
v, o, gate, up, down and the LM head at batch B, one token, each layer's weights an array of its
own as the sampler's decoding weights are; no attention, sampling or cache) jitted by XLA on the
same CPU. (Until issue 24 this floor scanned over stacked weights, which copies every layer's
slice: the table of 2026-12-05 in bench/README.md used that version.) Nothing a decode step does
is cheaper than its matmuls, so that time is this machine's floor for one step at this batch,
whether the matmuls are bound by compute or by reading the weights. Our decode step is timed as
(T(64 new) - T(16 new)) / 48 (prefill and compile cancel), and its ratio to the floor printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def matmul_floor(cfg, batch: int, repeats: int = 20) -> tuple[float, float]:
    """Seconds of one decode step's weight matmuls at ``batch`` (median of ``repeats``) and its
    GFLOP: the floor a decode step of ``cfg`` cannot beat on this machine."""
    import jax
    import jax.numpy as jnp

    e, f, d = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.head_dim or cfg.hidden_size // cfg.num_heads,
    )
    h, kv, n = cfg.num_heads * d, cfg.num_kv_heads * d, cfg.num_layers
    keys = iter(jax.random.split(jax.random.key(0), 9))
    w = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
    stacked = dict(
        q=w(n, e, h),
        k=w(n, e, kv),
        v=w(n, e, kv),
        o=w(n, h, e),
        g=w(n, e, f),
        u=w(n, e, f),
        dn=w(n, f, e),
    )
    # one array per layer, as the sampler's decoding weights (a scan over the stacked weights
    # would copy each layer's slice first: no floor)
    layers = [{k: a[i] for k, a in stacked.items()} for i in range(n)]
    head = w(e, cfg.vocab_size)
    x0 = w(batch, e)

    @jax.jit
    def step(layers, head, x):
        for p in layers:
            a = x @ p["q"]
            side = jnp.mean(x @ p["k"] + x @ p["v"], -1, keepdims=True)  # keeps k, v live
            x = x + a @ p["o"] + 1e-6 * side
            x = x + (jax.nn.silu(x @ p["g"]) * (x @ p["u"])) @ p["dn"]
        return x @ head

    jax.block_until_ready(step(layers, head, x0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(layers, head, x0))
        times.append(time.perf_counter() - t0)
    gflop = 2 * batch * (n * (e * h + 2 * e * kv + h * e + 3 * e * f) + e * cfg.vocab_size) / 1e9
    return float(np.median(times)), gflop


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

    from metarm_jax.generation import sampling
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
        if name == "smollm2":
            from metarm_jax.models import pretrained

            smol = os.environ.get("METARM_SMOL_DIR") or pretrained.DEFAULT_OUT
            if not pretrained.is_complete(smol):
                raise SystemExit(
                    f"{smol}: no converted SmolLM2-135M; run `python -m "
                    "metarm_jax.models.pretrained` (or set METARM_SMOL_DIR)."
                )
            scan = None if args.scan_layers < 0 else bool(args.scan_layers)
            model = hf.load_hf(smol, "lm", scan_layers=scan)
            cfg = model.cfg
        else:
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

        def run_jax(seed, new=n_new):
            out = sampling.generate(
                model,
                ids,
                mask,
                seed,
                sampling.settings(max_new_tokens=new, min_new_tokens=new, **settings),
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
        short = 16
        run_jax(0, short)  # compile
        short_s = min(
            (lambda t0: (run_jax(r + 1, short), time.perf_counter() - t0)[1])(time.perf_counter())
            for r in range(args.repeats)
        )
        step_s = (min(jax_times) - short_s) / (n_new - short)
        floor_s, gflop = matmul_floor(cfg, b)
        rows.append((name, cfg.num_params(), jt, ht, jt / ht, compile_s, step_s, floor_s, gflop))
        print(
            f"{name}: jax {jt:,.0f} tok/s ({min(jax_times):.3f}s), HF {ht:,.0f} tok/s "
            f"({min(hf_times):.3f}s), speed-up {jt / ht:.2f}x, jax compile {compile_s:.1f}s; "
            f"decode step {step_s * 1e3:.2f} ms vs matmul floor {floor_s * 1e3:.2f} ms "
            f"({gflop:.2f} GFLOP, {gflop / floor_s:.0f} GFLOP/s): {step_s / floor_s:.2f}x",
            flush=True,
        )

    print(f"load average after: {os.getloadavg()}")
    print(
        "\n| model | params | JAX tok/s | HF tok/s | speed-up | JAX compile (s) | decode step ms "
        "| matmul floor ms | step / floor |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, p, jt, ht, s, c, st, fl, _ in rows:
        print(
            f"| {name} | {p / 1e6:.1f}M | {jt:,.0f} | {ht:,.0f} | {s:.2f}x | {c:.1f} "
            f"| {st * 1e3:.2f} | {fl * 1e3:.2f} | {st / fl:.2f}x |"
        )
    for name, *_, st, fl, _ in rows:
        verdict = "met" if st <= 1.25 * fl else "MISSED"
        print(
            f"goal {name}: decode step within 1.25x of the matmul floor: {st / fl:.2f}x -> {verdict}"
        )


if __name__ == "__main__":
    main()
