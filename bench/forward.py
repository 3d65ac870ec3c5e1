"""Tokens/s of our jitted forward and forward+backward against HF transformers (PyTorch) on the
same weights and batch, on this machine's CPU, measured side by side in one run.

    python bench/forward.py [--configs tiny,llama_100m] [--repeats 5]

Both sides compute fp32 next-token cross-entropy on the same batch; forward+backward includes
the gradient of every weight. Compile time of the JAX side is reported separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from metarm_jax.models import hf, llama

SHAPES = {"tiny": (8, 128), "llama_100m": (2, 128)}  # (batch, seq_len)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(name: str, repeats: int, scan: bool) -> dict:
    b, t = SHAPES.get(name, (4, 128))
    cfg = llama.preset(name, scan_layers=scan)
    with tempfile.TemporaryDirectory() as d:
        hf.save_hf(llama.create(cfg, "lm", seed=0), d)
        ours = hf.load_hf(d, "lm", scan_layers=scan)
        ref = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (b, t)).astype(np.int64)
    mask = np.ones_like(ids)

    graphdef, params = nnx.split(ours, nnx.Param)

    def loss_fn(params, ids, mask):
        logits = nnx.merge(graphdef, params)(ids, mask)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()

    fwd = jax.jit(loss_fn)
    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
    jids, jmask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    t0 = time.perf_counter()
    fwd_c = fwd.lower(params, jids, jmask).compile()
    fwd_bwd_c = fwd_bwd.lower(params, jids, jmask).compile()
    compile_s = time.perf_counter() - t0

    tids, tmask = torch.tensor(ids), torch.tensor(mask)

    def torch_loss():
        return ref(input_ids=tids, attention_mask=tmask, labels=tids).loss

    def torch_fwd():
        with torch.no_grad():
            torch_loss()

    def torch_fwd_bwd():
        ref.zero_grad(set_to_none=True)
        torch_loss().backward()

    # same number: proves both sides compute the same loss on the same weights
    jl = float(fwd_c(params, jids, jmask))
    with torch.no_grad():
        tl = float(torch_loss())
    assert abs(jl - tl) < 1e-4 * max(1, abs(tl)), (jl, tl)

    tokens = b * t
    r = {}
    r["jax_fwd"] = best_time(lambda: jax.block_until_ready(fwd_c(params, jids, jmask)), repeats)
    r["torch_fwd"] = best_time(torch_fwd, repeats)
    r["jax_fwd_bwd"] = best_time(
        lambda: jax.block_until_ready(fwd_bwd_c(params, jids, jmask)), repeats
    )
    r["torch_fwd_bwd"] = best_time(torch_fwd_bwd, repeats)
    return dict(
        config=name,
        params=cfg.num_params(),
        batch=b,
        seq=t,
        scan=scan,
        compile_s=compile_s,
        loss=jl,
        **{k: tokens / v for k, v in r.items()},
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,llama_100m")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    print(
        f"{'config':11s} {'params':>10s} {'B x T':>8s} {'scan':>5s} {'compile s':>9s} "
        f"{'fwd tok/s jax':>14s} {'torch':>9s} {'ratio':>6s} "
        f"{'fwd+bwd tok/s jax':>18s} {'torch':>9s} {'ratio':>6s}"
    )
    for name in args.configs.split(","):
        for scan in (True, False):
            r = bench(name, args.repeats, scan)
            print(
                f"{r['config']:11s} {r['params']:>10,d} {r['batch']:>3d} x {r['seq']:<4d}"
                f"{r['scan']!s:>5s} {r['compile_s']:>9.1f} "
                f"{r['jax_fwd']:>14,.0f} {r['torch_fwd']:>9,.0f} "
                f"{r['jax_fwd'] / r['torch_fwd']:>5.2f}x "
                f"{r['jax_fwd_bwd']:>18,.0f} {r['torch_fwd_bwd']:>9,.0f} "
                f"{r['jax_fwd_bwd'] / r['torch_fwd_bwd']:>5.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
