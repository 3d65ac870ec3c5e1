"""GPU benchmark (H100 / H200): MFU of the RM and MetaRM train steps, decode tokens/s against
the HBM roofline, peak memory. One table at the end. Run it with bench/gpu.sh (installs the CUDA
jaxlib of requirements.txt's jax version when the GPU is not visible, then calls this file).

    bench/gpu.sh                        # 1B and 7B, on every visible GPU (FSDP when > 1)
    bench/gpu.sh --dry-run              # CPU, tiny preset, a few steps: checks that it runs
    python bench/gpu_bench.py --items=train:meta1:llama_1b,decode:llama_1b

Items (each in its own subprocess, so a peak or an out-of-memory is its own):
  train:<rm|meta1>:<preset>   the loop's full jitted train step (grads, clip, AdamW, NaN guard)
                              at the paper's batch (n = 16 pairs, m = 16 prompts x k = 5), bf16
                              compute, random weights. The policy is the first of the item's
                              candidates whose compiled peak (XLA's memory analysis on this GPU)
                              fits the device; none fitting is reported as such.
  decode:<preset>             one sampler token step (the model on its decoding weights, bf16,
                              with the per-layer KV cache, one GPU) at batch 1 and 16: tokens/s
                              against batch x HBM_BW / (weight bytes + KV-cache bytes) per step;
                              the note counts the weight- and cache-sized copies the GPU-compiled
                              step writes (compile_7b.big_writes; 0 is the goal)
  generate:<preset>           sampling.generate end to end (prefill, top-p 0.9, T 0.8, repetition
                              penalty 1.1, --new-tokens forced), batch 16
  rollout:<preset>            a PPO roll-out's generation at configs/hh_rlhf.py's shapes:
                              --rollout-queries prompts of --rollout-prompt tokens x 16 samples,
                              --rollout-new new tokens forced, fp32 actor weights decoding in bf16
                              (the config's mixed policy); tokens/s
  attention:<preset>          the RM's forward+backward (bf16, 4 x --seq-len) with
                              model.attention = cudnn, xla and einsum: ms each, and the loss and
                              gradient of cudnn and einsum against xla (cuDNN is checked on the
                              GPU only: tests/test_attention.py checks xla against einsum)
Train items run with --attention (default auto: cuDNN's flash attention on a GPU); when that does
not compile, xla (noted in the row). MFU = model FLOPs (6·N·tokens plus attention,
bench/compile_7b.py's model_flops; remat not counted) / (step time x devices x peak bf16); the
"HW MFU" column counts the compiled HLO's matmul FLOPs (remat included). Peaks and bandwidths are datasheet values for the
detected device (override with --peak-tflops / --hbm-tbs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# device_kind substring -> (dense bf16 FLOP/s, HBM bytes/s), datasheet figures.
DEVICES = (
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),  # SXM (HBM3)
    ("A100", 312e12, 2.0e12),  # 80 GB SXM (2.04 TB/s)
)
# Policies tried in order (compiled peak vs the device's memory), by preset and device count.
# "policy[@A<micro-batches>]" (train.grad_accum). From docs/scaling.md's compiled figures: on one
# 141 GB GPU the 7B step needs bf16 weights and Adam state with full remat (fp32 master weights
# and Adam alone are 74 GiB, and the optimizer phase adds 57 GiB); MetaRM also micro-batches.
# qkv_attn (q, k, v and the attention output kept; the MLP recomputed) costs 1.18x the model
# FLOPs where full costs 1.26x (docs/scaling.md); tried first, kept when it fits.
CANDIDATES = {
    ("llama2_7b", 1): ("bf16:qkv_attn", "bf16:full", "bf16:full@A2"),
    ("llama2_7b", "many"): ("mixed:dots_no_batch", "mixed:full", "mixed:full@A2"),
}
DEFAULT_CANDIDATES = ("mixed:dots_no_batch", "mixed:full", "bf16:full")
GiB = 2**30


def device_figures(kind: str, peak_tflops: float, hbm_tbs: float):
    peak, bw = None, None
    for key, p, b in DEVICES:
        if key in kind:
            peak, bw = p, b
            break
    if peak_tflops:
        peak = peak_tflops * 1e12
    if hbm_tbs:
        bw = hbm_tbs * 1e12
    return peak, bw


# --------------------------------------------------------------------------------------------
# One item (child process).
# --------------------------------------------------------------------------------------------


def materialize(args, shardings, vocab: int, seed: int = 0):
    """Random arrays for abstract ``args`` on ``shardings`` (one jitted program): weights
    N(0, 0.02), optimizer state zeros, token ids uniform, masks ones (the step's cost depends on
    the shapes only)."""
    import jax
    import jax.numpy as jnp

    flat, treedef = jax.tree_util.tree_flatten_with_path(args)
    shs = jax.tree.leaves(shardings)

    def make():
        out = []
        for i, (path, x) in enumerate(flat):
            name = jax.tree_util.keystr(path)
            key = jax.random.fold_in(jax.random.key(seed), i)
            if jnp.issubdtype(x.dtype, jnp.floating):
                if "opt_state" in name:
                    out.append(jnp.zeros(x.shape, x.dtype))
                else:
                    out.append((0.02 * jax.random.normal(key, x.shape)).astype(x.dtype))
            elif name.endswith("ids']") or name == "[2]":  # token ids (decode: the token)
                out.append(jax.random.randint(key, x.shape, 3, vocab, x.dtype))
            elif "mask" in name:
                out.append(jnp.ones(x.shape, x.dtype))
            else:
                out.append(jnp.zeros(x.shape, x.dtype))
        return out

    return jax.tree_util.tree_unflatten(treedef, jax.jit(make, out_shardings=shs)())


def _peak_bytes(dev) -> int | None:
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _limit_bytes(dev) -> int | None:
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _compiled_peak(compiled) -> int:
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def run_train(step: str, preset: str, a) -> list[dict]:
    import compile_7b as C
    import jax

    from metarm_jax import sharding as shd
    from metarm_jax.models import llama

    devs = jax.devices()
    n = len(devs)
    mesh = shd.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devs)
    shapes = C.Shapes(n=a.n, m=a.m, k=a.k, seq_len=a.seq_len)
    limit = int(a.memory_limit_gib * GiB) if a.memory_limit_gib else _limit_bytes(devs[0])
    cands = a.policies.split(",") if a.policies else None
    cands = cands or CANDIDATES.get((preset, 1 if n == 1 else "many"), DEFAULT_CANDIDATES)
    tried = []
    for policy in cands:
        pol, _, accum = policy.partition("@A")
        cfg = llama.preset(preset, **C.parse_policy(pol), attention=a.attention)
        shapes = dataclasses.replace(shapes, grad_accum=int(accum or 1))
        try:
            compiled, args, compile_s = _compile(C, step, cfg, mesh, shapes)
        except Exception as e:  # cuDNN refused the shapes: the XLA attention instead
            if cfg.attention == "xla":
                raise
            tried.append(f"attention {cfg.attention}: {str(e).splitlines()[0][:100]}")
            cfg = cfg.replace(attention="xla")
            compiled, args, compile_s = _compile(C, step, cfg, mesh, shapes)
        peak = _compiled_peak(compiled)
        if limit is not None and peak > limit:
            tried.append(f"{policy}: compiled peak {peak / GiB:.1f} GiB > {limit / GiB:.1f} GiB")
            del compiled
            continue
        with jax.set_mesh(mesh):
            state, batch = materialize(args, compiled.input_shardings[0], cfg.vocab_size)
            for _ in range(max(a.warmup, 1)):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times = []
            for _ in range(a.steps):
                t = time.perf_counter()
                state, metrics = compiled(state, batch)
                jax.block_until_ready((state, metrics))
                times.append(time.perf_counter() - t)
        sec = sorted(times)[len(times) // 2]
        flops = C.model_flops(step, cfg, shapes)
        hlo_flops = C.analyse_hlo(compiled.as_text(), n)["hlo_flops"] * n
        seqs = 2 * shapes.n + (shapes.m * shapes.k if step == "meta1" else 0)
        return [
            dict(
                what=f"train {step}",
                preset=preset,
                policy=f"{policy} / {llama.attention_impl(cfg, shapes.seq_len, shapes.seq_len)}",
                hw_flops=hlo_flops,
                devices=n,
                batch=f"{seqs}x{shapes.seq_len}",
                sec=sec,
                tokens_s=seqs * shapes.seq_len / sec,
                flops=flops,
                compiled_peak=peak,
                peak=_peak_bytes(devs[0]),
                compile_s=compile_s,
                note="; ".join(f"not {t}" for t in tried),
            )
        ]
    return [
        dict(
            what=f"train {step}",
            preset=preset,
            policy="-",
            devices=n,
            batch=f"{2 * shapes.n + (shapes.m * shapes.k if step == 'meta1' else 0)}x{shapes.seq_len}",
            note="does not fit: " + "; ".join(tried),
        )
    ]


def _compile(C, step, cfg, mesh, shapes):
    """(compiled step, abstract args, compile seconds) of compile_7b's ``step``."""
    import jax

    with jax.set_mesh(mesh):
        jitted, args, _ = C.build(step, cfg, mesh, shapes)
        t0 = time.perf_counter()
        compiled = jitted.lower(*args).compile()
    return compiled, args, time.perf_counter() - t0


def run_decode(preset: str, a) -> list[dict]:
    import compile_7b as C
    import jax

    from metarm_jax import sharding as shd
    from metarm_jax.models import llama

    dev = jax.devices()[0]
    mesh = shd.make_mesh({"data": 1}, [dev])
    cfg = llama.preset(preset, **C.parse_policy("bf16:none"))
    rows = []
    for b in (int(x) for x in a.decode_batches.split(",")):
        shapes = C.Shapes(cache_len=a.cache_len)
        with jax.set_mesh(mesh):
            jitted, args, info = C.build(f"decode{b}", cfg, mesh, shapes)
            t0 = time.perf_counter()
            compiled = jitted.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            params, cache, tok = materialize(args, compiled.input_shardings[0], cfg.vocab_size)
            for _ in range(3):
                logits, cache = compiled(params, cache, tok)
            jax.block_until_ready((logits, cache))
            t = time.perf_counter()
            for _ in range(a.decode_steps):
                logits, cache = compiled(params, cache, tok)
            jax.block_until_ready((logits, cache))
            sec = (time.perf_counter() - t) / a.decode_steps
        read = info["param_bytes"] + info["cache_bytes"]
        writes = C.write_summary(
            C.big_writes(compiled.as_text(), C.copy_threshold(cfg, f"decode{b}", shapes))
        )
        copies = sum(w["count"] for w in writes.values())
        copied = sum(w["bytes"] for w in writes.values())
        kinds = ", ".join(f"{k} {int(w['count'])}" for k, w in writes.items()) or "none"
        rows.append(
            dict(
                what="decode step",
                preset=preset,
                policy="bf16 weights",
                devices=1,
                batch=f"{b} (cache {a.cache_len})",
                sec=sec,
                tokens_s=b / sec,
                flops=C.model_flops(f"decode{b}", cfg, shapes),
                bytes_per_step=read,
                compiled_peak=_compiled_peak(compiled),
                peak=_peak_bytes(dev),
                compile_s=compile_s,
                note=f"reads {read / GiB:.1f} GiB/step; weight/cache-sized writes per step: "
                f"{copies} ({copied / GiB:.2f} GiB: {kinds})",
            )
        )
        del compiled, params, cache
    return rows


def run_generate(preset: str, a) -> list[dict]:
    import jax
    import numpy as np

    from metarm_jax import sharding as shd
    from metarm_jax.generation import sampling
    from metarm_jax.models import llama

    dev = jax.devices()[0]
    cfg = llama.preset(preset, dtype="bfloat16", param_dtype="bfloat16")
    model = llama.create(cfg, "lm", seed=0, mesh=shd.make_mesh({"data": 1}, [dev]))
    b, t, new = 16, a.prompt_len, a.new_tokens
    rs = np.random.RandomState(0)
    ids = rs.randint(3, cfg.vocab_size, (b, t))
    mask = np.ones((b, t), np.int64)
    settings = _hh_sampling(new, t)
    t0 = time.perf_counter()
    jax.block_until_ready(sampling.generate(model, ids, mask, 0, settings).tokens)
    first = time.perf_counter() - t0
    times = []
    for seed in (1, 2):
        t0 = time.perf_counter()
        out = sampling.generate(model, ids, mask, seed, settings)
        jax.block_until_ready(out.tokens)
        times.append(time.perf_counter() - t0)
    sec = min(times)
    return [
        dict(
            what="generate",
            preset=preset,
            policy="bf16 weights",
            devices=1,
            batch=f"{b} (prompt {t} + {new})",
            sec=sec / new,
            tokens_s=b * new / sec,
            peak=_peak_bytes(dev),
            compile_s=first - sec,
            note="prefill + sampling included; sec = per new token",
        )
    ]


def _hh_sampling(new: int, prompt_len: int):
    """configs/hh_rlhf.py's sampling (top-p 0.9, T 0.8, repetition penalty 1.1), ``new`` tokens
    forced, prompts bucketed at ``prompt_len``."""
    from metarm_jax.generation import sampling

    return sampling.settings(
        max_new_tokens=new,
        min_new_tokens=new,
        temperature=0.8,
        top_p=0.9,
        repetition_penalty=1.1,
        prompt_bucket_min=prompt_len,
    )


def run_rollout(preset: str, a) -> list[dict]:
    """A PPO roll-out's generation (configs/hh_rlhf.py: 16 samples per prompt, top-p 0.9, T 0.8,
    repetition penalty 1.1) with fp32 actor weights decoding in bf16."""
    import jax
    import numpy as np

    from metarm_jax import sharding as shd
    from metarm_jax.generation import sampling
    from metarm_jax.models import llama

    dev = jax.devices()[0]
    cfg = llama.preset(preset, dtype="bfloat16", param_dtype="float32")
    model = llama.create(cfg, "lm", seed=0, mesh=shd.make_mesh({"data": 1}, [dev]))
    q, r, t, new = a.rollout_queries, 16, a.rollout_prompt, a.rollout_new
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, (q, t))
    mask = np.ones((q, t), np.int64)
    settings = _hh_sampling(new, t)
    t0 = time.perf_counter()
    jax.block_until_ready(sampling.generate(model, ids, mask, 0, settings, num_samples=r).tokens)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampling.generate(model, ids, mask, 1, settings, num_samples=r)
    jax.block_until_ready(out.tokens)
    sec = time.perf_counter() - t0
    return [
        dict(
            what="PPO roll-out",
            preset=preset,
            policy="fp32 weights, bf16 decode",
            devices=1,
            batch=f"{q} x {r} (prompt {t} + {new})",
            sec=sec / new,
            tokens_s=q * r * new / sec,
            peak=_peak_bytes(dev),
            compile_s=first - sec,
            note="prefill + sampling included; sec = per new token",
        )
    ]


def run_attention(preset: str, a) -> list[dict]:
    """The RM's forward+backward with each attention implementation; cudnn and einsum against
    xla."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from metarm_jax.models import llama

    b, t = 4, a.seq_len
    cfg = llama.preset(preset, dtype="bfloat16", param_dtype="bfloat16", remat="full")
    _, params = nnx.split(llama.create(cfg, "reward", seed=0), nnx.Param)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, cfg.vocab_size, (b, t)), jnp.int32)
    mask = jnp.ones((b, t), jnp.int32).at[1, : t // 4].set(0)  # a left-padded row
    impls = ["xla", "einsum"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
    out, rows = {}, []
    for impl in impls:
        gd = nnx.graphdef(llama.create(cfg.replace(attention=impl), "reward", seed=0))
        loss = lambda p, gd=gd: jnp.mean(nnx.merge(gd, p)(ids, mask).astype(jnp.float32) ** 2)
        fn = jax.jit(jax.value_and_grad(loss))
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params))
            compile_s = time.perf_counter() - t0
        except Exception as e:
            rows.append(dict(what=f"attention {impl}", preset=preset, note=f"failed: {e}"[:160]))
            continue
        times = []
        for _ in range(max(a.steps, 3)):
            t0 = time.perf_counter()
            out[impl] = jax.block_until_ready(fn(params))
            times.append(time.perf_counter() - t0)
        sec = sorted(times)[len(times) // 2]
        note = ""
        if impl != "xla" and "xla" in out:
            (l0, g0), (l1, g1) = out["xla"], out[impl]
            f32 = lambda g: jax.tree.map(lambda x: np.asarray(x, np.float32), g)
            g0, g1 = f32(g0), f32(g1)
            num = sum(
                float(np.sum((x - y) ** 2))
                for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1))
            )
            den = sum(float(np.sum(x**2)) for x in jax.tree.leaves(g0))
            note = (
                f"vs xla: loss {float(l1):.6g} / {float(l0):.6g}, "
                f"|grad diff| / |grad| {np.sqrt(num / den):.2e}"
            )
        rows.append(
            dict(
                what=f"attention {impl}",
                preset=preset,
                policy="bf16:full, fwd+bwd",
                devices=1,
                batch=f"{b}x{t}",
                sec=sec,
                tokens_s=b * t / sec,
                compile_s=compile_s,
                note=note,
            )
        )
    return rows


def child(item: str, a) -> list[dict]:
    kind, *rest = item.split(":")
    if kind == "train":
        return run_train(rest[0], rest[1], a)
    if kind == "decode":
        return run_decode(rest[0], a)
    if kind == "generate":
        return run_generate(rest[0], a)
    if kind == "rollout":
        return run_rollout(rest[0], a)
    if kind == "attention":
        return run_attention(rest[0], a)
    raise SystemExit(f"unknown item {item!r}")


# --------------------------------------------------------------------------------------------
# The parent: one subprocess per item, one table.
# --------------------------------------------------------------------------------------------


def _fmt(x, spec, scale=1.0):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x / scale, spec)


def table(rows: list[dict], kind: str, peak: float | None, bw: float | None) -> str:
    head = (
        "| what | preset | policy | GPUs | batch | ms/step | tokens/s | model TFLOP/s | MFU "
        "| HW MFU | roofline tok/s | of roofline | peak GiB (XLA / allocator) | compile s | note |"
    )
    lines = [
        f"device: {kind}; peak bf16 {_fmt(peak, '.0f', 1e12)} TFLOP/s, "
        f"HBM {_fmt(bw, '.2f', 1e12)} TB/s (datasheet)",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        sec = r.get("sec")
        tflops = r["flops"] / sec / r["devices"] if sec and r.get("flops") else None
        mfu = tflops / peak if tflops and peak else None
        hw = (
            r["hw_flops"] / sec / r["devices"] / peak
            if sec and r.get("hw_flops") and peak
            else None
        )
        roof = None
        if r.get("bytes_per_step") and bw:
            roof = int(r["batch"].split()[0]) * bw / r["bytes_per_step"]
        frac = r["tokens_s"] / roof if roof else None
        lines.append(
            f"| {r['what']} | {r['preset']} | {r.get('policy', '-')} | {r.get('devices', '-')} "
            f"| {r.get('batch', '-')} | {_fmt(sec, '.1f', 1e-3)} | {_fmt(r.get('tokens_s'), ',.0f')} "
            f"| {_fmt(tflops, '.1f', 1e12)} | {_fmt(mfu, '.1%')} | {_fmt(hw, '.1%')} "
            f"| {_fmt(roof, ',.0f')} "
            f"| {_fmt(frac, '.1%')} | {_fmt(r.get('compiled_peak'), '.1f', GiB)} / "
            f"{_fmt(r.get('peak'), '.1f', GiB)} | {_fmt(r.get('compile_s'), '.0f')} "
            f"| {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, few steps")
    ap.add_argument("--items", default="", help="comma list (default: 1B and 7B, all kinds)")
    ap.add_argument("--item", default="", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--json-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--policies", default="", help="candidate policies for train items")
    ap.add_argument("--seq-len", type=int, default=512, help="RM/MetaRM sequence length")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode-batches", default="1,2,16")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--cache-len", type=int, default=1024)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--attention", default="auto", help="model.attention of the train items")
    ap.add_argument("--rollout-queries", type=int, default=0, help="0: 32 (1B), 4 (7B)")
    ap.add_argument("--rollout-prompt", type=int, default=512)
    ap.add_argument("--rollout-new", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=440, help="stop starting items after this")
    ap.add_argument("--item-timeout-s", type=float, default=240)
    ap.add_argument(
        "--memory-limit-gib", type=float, default=0.0, help="fit limit (default: the device's)"
    )
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--hbm-tbs", type=float, default=0.0)
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    a = ap.parse_args(argv)

    if a.item:  # child: run one item, write its rows
        if a.dry_run:
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if not a.rollout_queries:  # the config's 32 x 16 roll-outs; 7B: one of 8 devices' share
            a.rollout_queries = 4 if "7b" in a.item else 32
        rows = child(a.item, a)
        with open(a.json_out, "w") as f:
            json.dump(rows, f)
        return rows

    if a.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        a.seq_len, a.steps, a.warmup = 64, 2, 1
        a.decode_steps, a.cache_len, a.prompt_len, a.new_tokens = 8, 64, 16, 8
        a.rollout_queries, a.rollout_prompt, a.rollout_new = 2, 16, 8
        items = a.items or (
            "decode:tiny,attention:tiny,train:rm:tiny,train:meta1:tiny,rollout:tiny,generate:tiny"
        )
        a.policies = a.policies or "mixed:dots_no_batch"
    else:  # the issue's table, most wanted first (items stop being started after --budget-s)
        items = a.items or ",".join(
            [
                "decode:llama2_7b",
                "attention:llama_1b",
                "train:rm:llama_1b",
                "train:meta1:llama_1b",
                "train:rm:llama2_7b",
                "train:meta1:llama2_7b",
                "rollout:llama_1b",
                "generate:llama_1b",
                "rollout:llama2_7b",
                "decode:llama_1b",
            ]
        )
    import jax

    kind = jax.devices()[0].device_kind
    print(f"jax {jax.__version__}, {jax.device_count()} x {kind} ({jax.default_backend()})")
    if not a.dry_run and jax.default_backend() != "gpu":
        print("warning: no GPU visible; the figures below are not GPU figures", flush=True)
    peak, bw = device_figures(kind, a.peak_tflops, a.hbm_tbs)
    del jax  # children own the devices from here on

    keys = ("policies", "seq_len", "n", "m", "k", "steps", "warmup", "decode_batches")
    keys += ("memory_limit_gib", "attention", "rollout_queries", "rollout_prompt", "rollout_new")
    keys += ("decode_steps", "cache_len", "prompt_len", "new_tokens")
    passthrough = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in keys]
    passthrough += ["--dry-run"] if a.dry_run else []
    rows: list[dict] = []
    done = 0
    start = time.perf_counter()
    for item in items.split(","):
        left = a.budget_s - (time.perf_counter() - start)
        preset = item.split(":")[-1]
        if left < 30:
            rows.append(dict(what=item, preset=preset, note="skipped: time budget spent"))
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--item", item]
        cmd += ["--json-out", out]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                cmd, capture_output=True, text=True, timeout=min(a.item_timeout_s, left)
            )
            if p.returncode == 0:
                with open(out) as f:
                    got = json.load(f)
                rows += got
            else:
                tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append(dict(what=item, preset=preset, note=f"failed: {tail[0][:160]}"))
        except subprocess.TimeoutExpired:
            rows.append(dict(what=item, preset=preset, note="timed out"))
        finally:
            if os.path.exists(out):
                os.remove(out)
        print(f"{item}: {time.perf_counter() - t0:.0f} s", flush=True)
        for r in rows[done:]:  # each row as it comes: a run stopped by a time limit keeps them
            print("  " + json.dumps(r), flush=True)
        done = len(rows)
        if a.out:  # the table so far, rewritten after every item
            with open(a.out, "w") as f:
                f.write(table(rows, kind, peak, bw) + "\n")
    text = table(rows, kind, peak, bw)
    print("\n" + text)
    return rows


if __name__ == "__main__":
    main()
