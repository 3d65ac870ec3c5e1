"""Forward+backward at equal work, piece by piece: where JAX (XLA:CPU) loses to PyTorch.

    python bench/kernels.py                    # llama_100m shapes, B x T = 2 x 128
    python bench/kernels.py --flags=0          # the pieces only, no XLA flag sweep

Part 1, the pieces of one fwd+bwd of the llama_100m model (106M; bench/forward.py times the
whole), each jitted alone in JAX and run in torch (2 threads) on the same arrays, median of
--repeats, as tokens/s and the JAX/torch ratio:
  layer matmuls   one decoder layer's seven projections (q, k, v, o, gate, up, down), fwd+bwd
  attention       scores, causal mask, softmax, weighted values of one layer, fwd+bwd
                  (ours: einsum + where + softmax; jax.nn.dot_product_attention beside it)
  lm head + CE    the [E, V] head and the log-softmax cross-entropy, fwd+bwd
  embedding       the gather and its gradient (a scatter-add into [V, E]); beside it the
                  gradient as a one-hot matmul
Part 2, XLA:CPU flags: the whole model's fwd+bwd (scan over layers) in a fresh process per flag
set, tokens/s, with torch's timed in this process before and after.
Part 3, the layer loop: the same whole fwd+bwd with the scan unrolled 1, 2, 4 and 8 (all) layers
per iteration (``model.scan_unroll``) and as a Python loop (``scan_layers=False``), with compile
time; torch before and after.
Part 4, fused projections (issue 24): q, k, v as one matmul against the three weights side by
side ([E, (H + 2 KVH) D], then split) and gate, up as one ([E, 2F]), against the separate
matmuls the model runs, side by side in this process (the two timed alternately, median of
--repeats each): fwd+bwd of a layer's q/k/v and gate/up at the training shape B x T, and the
forward alone at a decode step's shape (--decode-rows rows of one token).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.forward import best_time as median_time

FLAG_SETS = [
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_thunk_runtime=false",
]


def pieces(b, t, repeats):
    import jax
    import jax.numpy as jnp
    import torch

    from metarm_jax.models import llama

    torch.set_num_threads(2)
    cfg = llama.preset("llama_100m")
    e, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, d = cfg.num_heads, cfg.head_dim
    rng = np.random.default_rng(0)
    arr = lambda *s: (0.02 * rng.standard_normal(s)).astype(np.float32)
    x = arr(b, t, e)
    w = {
        k: arr(*s)
        for k, s in dict(
            q=(e, h * d),
            k=(e, h * d),
            v=(e, h * d),
            o=(h * d, e),
            gate=(e, f),
            up=(e, f),
            down=(f, e),
        ).items()
    }
    qkv = [arr(b, h, t, d) for _ in range(3)]
    head = arr(e, v)
    ids = rng.integers(0, v, (b, t))
    table = arr(v, e)
    rows = []

    def both(name, jax_fn, jax_args, torch_fn):
        jf = jax.jit(jax_fn)
        jargs = [jax.tree.map(jnp.asarray, a) for a in jax_args]
        jt = median_time(lambda: jax.block_until_ready(jf(*jargs)), repeats)
        tt = median_time(torch_fn, repeats)
        rows.append((name, b * t / jt, b * t / tt, tt / jt))
        print(
            f"  {name:34s} jax {b * t / jt:>10,.0f} tok/s  torch {b * t / tt:>10,.0f}  "
            f"ratio {tt / jt:.2f}x",
            flush=True,
        )

    # ---- layer matmuls
    def layer(w, x):
        q, k, vv = x @ w["q"], x @ w["k"], x @ w["v"]
        y = x + (q + k + vv) @ w["o"]
        return jnp.sum(y + (jax.nn.silu(y @ w["gate"]) * (y @ w["up"])) @ w["down"])

    tw = {k: torch.tensor(a, requires_grad=True) for k, a in w.items()}
    tx = torch.tensor(x, requires_grad=True)

    def t_layer():
        q, k, vv = tx @ tw["q"], tx @ tw["k"], tx @ tw["v"]
        y = tx + (q + k + vv) @ tw["o"]
        out = (y + (torch.nn.functional.silu(y @ tw["gate"]) * (y @ tw["up"])) @ tw["down"]).sum()
        out.backward()

    both("layer matmuls fwd+bwd", jax.grad(layer, argnums=(0, 1)), (w, x), t_layer)

    # ---- attention core
    causal = np.tril(np.ones((t, t), bool))

    def attn_ours(q, k, vv):
        s = jnp.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(d)
        s = jnp.where(causal, s, jnp.finfo(jnp.float32).min)
        return jnp.sum(jnp.einsum("bhts,bhsd->bhtd", jax.nn.softmax(s, -1), vv))

    def attn_lib(q, k, vv):  # [B, T, H, D] layout
        tr = lambda z: jnp.swapaxes(z, 1, 2)
        return jnp.sum(jax.nn.dot_product_attention(tr(q), tr(k), tr(vv), is_causal=True))

    tq = [torch.tensor(a, requires_grad=True) for a in qkv]

    def t_attn():
        out = torch.nn.functional.scaled_dot_product_attention(*tq, is_causal=True).sum()
        out.backward()

    both("attention fwd+bwd (ours: einsum)", jax.grad(attn_ours, argnums=(0, 1, 2)), qkv, t_attn)
    both("attention fwd+bwd (jax.nn.dpa)", jax.grad(attn_lib, argnums=(0, 1, 2)), qkv, t_attn)

    # ---- lm head + cross-entropy
    y = arr(b, t, e)

    def head_ce(hd, y):
        logp = jax.nn.log_softmax(y @ hd, -1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids)[..., None], -1))

    th, ty = torch.tensor(head, requires_grad=True), torch.tensor(y, requires_grad=True)
    tids = torch.tensor(ids)

    def t_head():
        logits = ty @ th
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, v), tids.reshape(-1))
        loss.backward()

    both("lm head + CE fwd+bwd", jax.grad(head_ce, argnums=(0, 1)), (head, y), t_head)

    # ---- embedding gather + gradient
    cot = arr(b, t, e)

    def emb(tb):
        return jnp.sum(jnp.take(tb, jnp.asarray(ids), axis=0) * cot)

    def emb_onehot(tb):
        oh = jax.nn.one_hot(jnp.asarray(ids), v, dtype=tb.dtype)
        return jnp.sum((oh @ tb) * cot)

    tt_ = torch.tensor(table, requires_grad=True)
    tcot = torch.tensor(cot)

    def t_emb():
        (torch.nn.functional.embedding(tids, tt_) * tcot).sum().backward()

    both("embedding fwd+bwd (gather/scatter)", jax.grad(emb), (table,), t_emb)
    both("embedding fwd+bwd (one-hot matmul)", jax.grad(emb_onehot), (table,), t_emb)
    return rows


def fused_projections(b, t, repeats, decode_rows):
    """Part 4: fused q/k/v and gate/up matmuls against separate ones, JAX only; ratios
    separate time / fused time (> 1: fused is faster)."""
    import time

    import jax
    import jax.numpy as jnp

    from metarm_jax.models import llama

    cfg = llama.preset("llama_100m")
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    hd, kvd = cfg.num_heads * d, cfg.num_kv_heads * d
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray((0.02 * rng.standard_normal(s)).astype(np.float32))
    w = dict(q=arr(e, hd), k=arr(e, kvd), v=arr(e, kvd), gate=arr(e, f), up=arr(e, f))
    wf = dict(
        qkv=jnp.concatenate([w["q"], w["k"], w["v"]], 1),
        gu=jnp.concatenate([w["gate"], w["up"]], 1),
    )

    def separate(w, x):
        q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
        a = jnp.sum(q * q) + jnp.sum(k * v)
        return a + jnp.sum(jax.nn.silu(x @ w["gate"]) * (x @ w["up"]))

    def fused(w, x):
        q, k, v = jnp.split(x @ w["qkv"], [hd, hd + kvd], axis=-1)
        a = jnp.sum(q * q) + jnp.sum(k * v)
        g, u = jnp.split(x @ w["gu"], 2, axis=-1)
        return a + jnp.sum(jax.nn.silu(g) * u)

    def alternate(fa, fb, args_a, args_b):
        for fn, args in ((fa, args_a), (fb, args_b)):
            jax.block_until_ready(fn(*args))
        ta, tb = [], []
        for _ in range(repeats):
            for fn, args, out in ((fa, args_a, ta), (fb, args_b, tb)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                out.append(time.perf_counter() - t0)
        return float(np.median(ta)), float(np.median(tb))

    rows = []
    x = arr(b * t, e)
    train = [jax.jit(jax.grad(fn, argnums=(0, 1))) for fn in (separate, fused)]
    ts, tf = alternate(*train, (w, x), (wf, x))
    rows.append((f"q/k/v + gate/up fwd+bwd, {b} x {t} tokens", ts, tf))
    xd = arr(decode_rows, e)
    fwd = [jax.jit(fn) for fn in (separate, fused)]
    ts2, tf2 = alternate(*fwd, (w, xd), (wf, xd))
    rows.append((f"q/k/v + gate/up forward, decode {decode_rows} rows", ts2, tf2))
    for name, a, bb in rows:
        print(
            f"  {name:44s} separate {a * 1e3:8.3f} ms  fused {bb * 1e3:8.3f} ms  "
            f"separate/fused {a / bb:.2f}x",
            flush=True,
        )
    return rows


CHILD = r"""
import json, os, sys, time
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from metarm_jax.models import llama
b, t, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
scan, unroll = sys.argv[4] == "1", int(sys.argv[5])
cfg = llama.preset("llama_100m", scan_layers=scan, scan_unroll=unroll)
t0 = time.perf_counter()
model = llama.create(cfg, "lm", seed=0)
gd, params = nnx.split(model, nnx.Param)
ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (b, t)), jnp.int32)
def loss(p):
    logits = nnx.merge(gd, p)(ids, None)
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()
f = jax.jit(jax.value_and_grad(loss))
jax.block_until_ready(f(params))
compile_s = time.perf_counter() - t0
ts = []
for _ in range(reps):
    t0 = time.perf_counter(); jax.block_until_ready(f(params)); ts.append(time.perf_counter() - t0)
print(json.dumps({"tok_s": b * t / float(np.median(ts)), "loss": float(f(params)[0]),
                  "compile_s": compile_s}))
"""


def torch_whole(b, t, repeats):
    import tempfile

    import torch
    import transformers

    from metarm_jax.models import hf, llama

    torch.set_num_threads(2)
    cfg = llama.preset("llama_100m")
    with tempfile.TemporaryDirectory() as d:
        hf.save_hf(llama.create(cfg, "lm", seed=0), d)
        m = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32)
    ids = torch.tensor(np.random.default_rng(0).integers(3, cfg.vocab_size, (b, t)))

    def step():
        m.zero_grad(set_to_none=True)
        m(input_ids=ids, labels=ids).loss.backward()

    return b * t / median_time(step, repeats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--flags", type=int, default=1)
    ap.add_argument("--unroll", type=int, default=1)
    ap.add_argument("--fusion", type=int, default=1, help="part 4: fused projections")
    ap.add_argument("--decode-rows", type=int, default=16)
    args = ap.parse_args()
    import jax
    import torch

    print(
        f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
        f"llama_100m shapes, B x T = {args.batch} x {args.seq}"
    )
    if args.repeats:
        print("\npart 1: the pieces, fwd+bwd, JAX vs torch")
        pieces(args.batch, args.seq, args.repeats)
    if args.flags:
        flag_sweep(args)
    if args.unroll:
        unroll_sweep(args)
    if args.fusion:
        print("\npart 4: fused q/k/v and gate/up projections vs separate (JAX), alternating")
        fused_projections(args.batch, args.seq, max(args.repeats, 5) * 4, args.decode_rows)


def child(args, flags="", scan=True, unroll=1):
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(args.batch),
            str(args.seq),
            "3",
            str(int(scan)),
            str(unroll),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        return None, (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def sweep(args, title, runs):
    """Whole-model fwd+bwd in a fresh process per (name, XLA_FLAGS, scan, unroll) of ``runs``,
    bracketed by torch's fwd+bwd timed here before and after; ratios against their mean."""
    print(f"\n{title}")
    before = torch_whole(args.batch, args.seq, 3)
    print(f"  torch fwd+bwd: {before:,.0f} tok/s (before)", flush=True)
    rows = []
    for name, flags, scan, unroll in runs:
        r, err = child(args, flags, scan, unroll)
        if r is None:
            print(f"  {name:48s} failed: {err}", flush=True)
            continue
        rows.append((name, r["tok_s"]))
        print(
            f"  {name:48s} {r['tok_s']:>8,.0f} tok/s  compile {r['compile_s']:5.1f} s  "
            f"loss {r['loss']:.6f}",
            flush=True,
        )
    after = torch_whole(args.batch, args.seq, 3)
    mean = (before + after) / 2
    print(f"  torch fwd+bwd: {after:,.0f} tok/s (after); mean {mean:,.0f}")
    for name, tok_s in rows:
        verdict = "met" if tok_s >= 0.9 * mean else "missed"
        print(f"  {name:48s} vs torch {tok_s / mean:.2f}x (issue 24's goal >= 0.9x: {verdict})")


def flag_sweep(args):
    runs = [(flags or "(defaults)", flags, True, 1) for flags in FLAG_SETS]
    sweep(args, "part 2: XLA:CPU flags, whole model fwd+bwd (scan), fresh process each", runs)


def unroll_sweep(args):
    runs = [(f"scan, unroll {u}", "", True, u) for u in (1, 2, 4, 8)]
    runs.append(("Python loop (scan_layers=False)", "", False, 1))
    sweep(args, "part 3: the layer loop, whole model fwd+bwd, fresh process each", runs)


if __name__ == "__main__":
    main()
