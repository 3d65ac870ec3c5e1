"""Compiled evidence for Llama-2-7B with no weights allocated: memory, FLOPs and collectives.

    .venv/bin/python bench/compile_7b.py --out=runs/compile_7b/all.json  # docs/scaling.md's 73
    METARM_SIM_DEVICES=32 .venv/bin/python bench/compile_7b.py --configs=v5p  # 32 devices
    .venv/bin/python bench/compile_7b.py --optimizer-probe=mixed:full        # the update alone
    .venv/bin/python bench/compile_7b.py --preset=tiny --seq-len=64 --configs=rm@fsdp8@f32:none

Every program is lowered and compiled from abstract inputs: the model is built with
``nnx.eval_shape``, the train state with ``jax.eval_shape`` of the loop's ``init_state``, and the
batches are ``jax.ShapeDtypeStruct``s; the steps are the project's own (``loop.make_train_step``
around ``rm.rm_step`` / ``rm.metarm_step`` / ``ppo.make_step_fn``, jitted by
``loop.jit_train_step`` with the one sharding table). Nothing the size of a weight is allocated,
so a 7B program compiles on a laptop. 8 devices are simulated on the CPU
(``--xla_force_host_platform_device_count``, set before JAX is imported).

A configuration is ``step@mesh@policy``:
  step    rm (vanilla RM), meta1 / meta2 (MetaRM first / second order), ppo (actor + critic
          trained, Adam on both), score (the roll-out scoring forward of the four models: actor,
          reference, critic, RM), decode16 / decode64 (one sampler token step, batch 16 / 64, with
          the KV cache of --cache-len)
  mesh    1 (one device), fsdp8 (data=1, fsdp=8, tensor=1), fsdp4tp2 (fsdp=4, tensor=2), or
          dpAfsdpBtpC
  policy  f32 (fp32 weights and compute), mixed (fp32 weights, bf16 compute: configs/hh_rlhf.py),
          bf16 (bf16 weights and compute; the optimizer's moments follow the weights' dtype),
          each with a remat policy after a colon: mixed:dots_no_batch, f32:none, bf16:full, ...
Named sets: ``main`` (every step on the three meshes with configs/hh_rlhf.py's policy),
``sweep`` (dtype and remat policies on 1 and 8 devices), ``dotfix``, ``fit80`` and ``one``
(the variants below that decide what fits an 80 GB A100 / a 141 GB H200), ``all`` (all of
those, 73 programs), ``v5p`` (fsdp=16 x tensor=2, TPU v5p-64's 32 chips: needs
METARM_SIM_DEVICES=32). A fourth field adds variants joined by '+': ``dotfix`` (the proposed
``core.tree.dot`` fix, see ``variant``), ``T<int>`` (RM sequence length), ``A<int>``
(train.grad_accum micro-batches), e.g. ``meta1@fsdp8@mixed:full@dotfix+A2``.

Per configuration it prints XLA's memory analysis per device (argument, output, temporary, alias
bytes; peak = argument + output + temporary - alias), FLOPs per device (XLA's cost analysis,
which counts a while-loop body once, and the matmul FLOPs of the compiled HLO with every loop
body multiplied by its trip count), the collectives of the compiled HLO per step (all-gather,
reduce-scatter, all-reduce, ...: count and bytes, loop trip counts included), the compile time
and the process's max RSS. See docs/scaling.md for the numbers and what they mean.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules:
    # Simulated CPU devices must be requested before JAX starts (as a module, e.g. in the test
    # session or bench/gpu_bench.py, the importer's devices are used).
    _flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    _n = os.environ.get("METARM_SIM_DEVICES", "8")
    os.environ["XLA_FLAGS"] = " ".join([*_flags, f"--xla_force_host_platform_device_count={_n}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import contextlib
import dataclasses
import json
import math
import re
import resource
import time
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from metarm_jax import sharding as shd
from metarm_jax.config import lib as config_lib
from metarm_jax.core import tree
from metarm_jax.models import llama
from metarm_jax.train import loop, optim, ppo, rm, rollout, rollout_scoring

GiB = 2**30
FAST = {"xla_backend_optimization_level": 0}  # LLVM -O0: the HLO passes are unchanged
STEPS = ("rm", "meta1", "meta2", "ppo", "score", "decode16", "decode64")
DTYPE_POLICIES = {
    "f32": ("float32", "float32"),  # (compute dtype, param dtype)
    "mixed": ("bfloat16", "float32"),
    "bf16": ("bfloat16", "bfloat16"),
}
# configs/hh_rlhf.py: bf16 compute over fp32 master weights, remat dots_no_batch, FSDP.
PAPER_POLICY = "mixed:dots_no_batch"
COLLECTIVES = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The paper's batch shapes (configs/hh_rlhf.py)."""

    n: int = 16  # preference pairs (2n = 32 sequences)
    m: int = 16  # meta prompts
    k: int = 5  # responses per meta prompt (m·k = 80 sequences)
    seq_len: int = 1024  # RM sequence length (data.max_length, the longest bucket)
    ppo_minibatch: int = 64  # ppo.minibatch_size
    ppo_seq_len: int = 768  # prompt (data.max_prompt_length 512) + response (256 new tokens)
    ppo_response: int = 256  # sampling.max_new_tokens
    score_rows: int = 512  # roll-out buffer: 32 queries x 16 roll-outs, scored in one call
    cache_len: int = 1024  # decode: KV-cache length
    grad_accum: int = 1  # train.grad_accum: micro-batches per optimizer step


# --------------------------------------------------------------------------------------------
# Configurations.
# --------------------------------------------------------------------------------------------


def parse_mesh(name: str) -> dict[str, int]:
    """'1' | 'fsdp8' | 'fsdp4tp2' | 'dp2fsdp4' | 'dp1fsdp4tp2' -> {'data', 'fsdp', 'tensor'}."""
    if name == "1":
        return {"data": 1, "fsdp": 1, "tensor": 1}
    m = re.fullmatch(r"(?:dp(\d+))?(?:fsdp(\d+))?(?:tp(\d+))?", name)
    if not m or not any(m.groups()):
        raise SystemExit(f"mesh {name!r}: expected 1, fsdpN, fsdpNtpM or dpAfsdpBtpC.")
    d, f, t = (int(g) if g else 1 for g in m.groups())
    return {"data": d, "fsdp": f, "tensor": t}


def parse_policy(name: str) -> dict[str, str]:
    dt, _, remat = name.partition(":")
    if dt not in DTYPE_POLICIES or (remat or "none") not in llama.REMAT_POLICIES:
        raise SystemExit(
            f"policy {name!r}: expected <{'|'.join(DTYPE_POLICIES)}>:<"
            f"{'|'.join(llama.REMAT_POLICIES)}>."
        )
    compute, param = DTYPE_POLICIES[dt]
    return {"dtype": compute, "param_dtype": param, "remat": remat or "none"}


VARIANTS = (
    "dotfix: core.tree.dot as an elementwise sum instead of jnp.vdot (the proposed fix); "
    "T<int>: this RM sequence length; A<int>: train.grad_accum micro-batches"
)


@contextlib.contextmanager
def variant(options: str, shapes: Shapes):
    """Apply a configuration's variant options ('dotfix', 'T512', joined by '+'); yields shapes.

    dotfix measures a proposed one-line change without editing the package: ``core.tree.dot``
    (behind every ``global_norm``) uses ``jnp.vdot``, which flattens each leaf; under FSDP a
    flattened sharded weight is all-gathered whole. An elementwise product and sum keeps each
    shard local and all-reduces one scalar per leaf."""
    saved = tree.dot
    try:
        for opt in filter(None, options.split("+")):
            if opt == "dotfix":
                tree.dot = _elementwise_dot
            elif re.fullmatch(r"T\d+", opt):
                shapes = dataclasses.replace(shapes, seq_len=int(opt[1:]))
            elif re.fullmatch(r"A\d+", opt):
                shapes = dataclasses.replace(shapes, grad_accum=int(opt[1:]))
            else:
                raise SystemExit(f"unknown variant {opt!r}; expected {VARIANTS}.")
        yield shapes
    finally:
        tree.dot = saved


def _elementwise_dot(a, b):
    return sum(
        (
            jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        ),
        jnp.float32(0),
    )


def named_sets() -> dict[str, list[str]]:
    main = [f"{s}@{m}@{PAPER_POLICY}" for m in ("1", "fsdp8", "fsdp4tp2") for s in STEPS]
    sweep = []
    for mesh in ("1", "fsdp8"):
        for pol in ("f32:none", "mixed:none", "mixed:dots", "mixed:full", "bf16:full"):
            sweep += [f"rm@{mesh}@{pol}", f"meta1@{mesh}@{pol}"]
    # bf16 weights for the sampler and a bf16 PPO state, on one device and under FSDP.
    sweep += [f"{s}@{m}@bf16:none" for s in ("decode16", "decode64") for m in ("1", "fsdp8")]
    sweep += ["ppo@1@bf16:full", "ppo@fsdp8@bf16:full"]
    # One device at T = 512 (the middle bucket); the measured effect of the dotfix variant.
    sweep += [f"{s}@1@{p}@T512" for s in ("rm", "meta1") for p in ("mixed:full", "bf16:full")]
    fix = [f"{s}@fsdp8@{PAPER_POLICY}@dotfix" for s in ("rm", "meta1", "ppo")]
    # What fits an 80 GB A100 under FSDP8: micro-batches (train.grad_accum), the fix, T = 512.
    fit80 = [f"meta1@fsdp8@{p}@A2" for p in (PAPER_POLICY, "mixed:full")]
    fit80 += [f"meta1@fsdp8@{p}@dotfix+A2" for p in (PAPER_POLICY, "mixed:full")]
    fit80 += [f"meta1@fsdp8@{PAPER_POLICY}@T512", f"meta1@fsdp8@{PAPER_POLICY}@dotfix+T512"]
    fit80 += [f"ppo@fsdp8@{PAPER_POLICY}@A{a}" for a in (2, 4)]
    fit80 += [f"ppo@fsdp8@{PAPER_POLICY}@dotfix+A{a}" for a in (2, 4)]
    fit80 += [f"{s}@fsdp8@bf16:full@dotfix" for s in ("rm", "meta1")]
    fit80 += [f"{s}@1@bf16:full@dotfix+T512" for s in ("rm", "meta1")]
    # What fits one 141 GB H200: micro-batches on one device.
    one = ["meta1@1@bf16:full@A2", "meta1@1@bf16:full@T512+A2"]
    one += ["ppo@1@bf16:full@A4", "ppo@1@bf16:full@A8", "rm@1@mixed:full@A2"]
    # TPU v5p-64's 32 chips as fsdp=16 x tensor=2 (the paper's n = 16 needs a batch split of 16);
    # needs METARM_SIM_DEVICES=32, so it is not part of "all".
    v5p = [
        f"{s}@fsdp16tp2@{PAPER_POLICY}{v}" for v in ("", "@dotfix") for s in ("rm", "meta1", "ppo")
    ]
    v5p += [f"decode64@fsdp16tp2@{PAPER_POLICY}"]
    return {
        "main": main,
        "sweep": sweep,
        "dotfix": fix,
        "fit80": fit80,
        "one": one,
        "all": main + sweep + fix + fit80 + one,
        "v5p": v5p,
    }


def expand_configs(spec: str) -> list[str]:
    sets = named_sets()
    out: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        for c in sets.get(item, [item]):
            if c not in out:
                out.append(c)
    return out


# --------------------------------------------------------------------------------------------
# Abstract models and steps.
# --------------------------------------------------------------------------------------------


def abstract_model(cfg: llama.LlamaConfig, head: str):
    """(apply(params, ids, mask), abstract params, graphdef, rest) with no array allocated."""
    abstract = nnx.eval_shape(lambda: llama.Llama(cfg, head, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)

    def apply(p, ids, mask):
        return nnx.merge(graphdef, p, rest)(ids, mask)

    return apply, params, graphdef, rest


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _ints(*shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def _floats(*shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def pref_batch(s: Shapes) -> dict:
    t = s.seq_len
    return {
        k: _ints(s.n, t) for k in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
    }


def meta_batch(s: Shapes) -> dict:
    return {
        "input_ids": _ints(s.m, s.k, s.seq_len),
        "attention_mask": _ints(s.m, s.k, s.seq_len),
        "sample_mask": _ints(s.m, s.k),
    }


def rollout_batch(s: Shapes) -> dict:
    b, t, n = s.ppo_minibatch, s.ppo_seq_len, s.ppo_response
    return {
        "input_ids": _ints(b, t),
        "attention_mask": _ints(b, t),
        "response_mask": _ints(b, n),
        "old_logp": _floats(b, n),
        "values": _floats(b, n),
        "advantages": _floats(b, n),
        "returns": _floats(b, n),
        "actor_on": _floats(b),
    }


def _paper_config():
    """configs/hh_rlhf.py's train and ppo blocks (optimizer, clipping, PPO losses)."""
    c = config_lib.base_config()
    c.train.lr, c.train.schedule = 5e-6, "linear"
    p = c.ppo
    p.policy_lr, p.critic_lr, p.kl_beta, p.reward_norm, p.reward_clip = (
        5e-7,
        1.5e-6,
        0.05,
        "scale",
        0.8,
    )
    return c


def train_program(step_fn, optimizer, params, batch, mesh, num_micro: int = 1):
    """(jitted train step, abstract state, abstract batch): the loop's own step and layout."""
    shardings = loop.state_shardings(mesh, params, optimizer)
    state = jax.eval_shape(lambda p: loop.init_state(p, optimizer, 0, shardings), params)
    train_step = loop.make_train_step(step_fn, optimizer, None, num_micro)
    return loop.jit_train_step(train_step, mesh, shardings, batch), (state, batch)


def build(step: str, cfg: llama.LlamaConfig, mesh, s: Shapes):
    """(jitted fn, abstract args, info) for one step; info holds the bytes of the model state."""
    c = _paper_config()
    info: dict[str, Any] = {}
    if step in ("rm", "meta1", "meta2"):
        apply, params, *_ = abstract_model(cfg, "reward")
        opt, _ = optim.optimizer(c.train, 1000)
        if step == "rm":
            fn, batch = rm.rm_step(apply, 0.0), {"pref": pref_batch(s)}
        else:
            order = "first" if step == "meta1" else "second"
            fn = rm.metarm_step(
                apply, config_lib.derive(c.meta, {"eta": 5e-6, "order": order}), 0.0
            )
            batch = {"pref": pref_batch(s), "meta": meta_batch(s)}
        jitted, args = train_program(fn, opt, params, batch, mesh, s.grad_accum)
        info.update(param_bytes=nbytes(params), state_bytes=nbytes(args[0]))
        return jitted, args, info
    if step == "ppo":
        lm_apply, actor, *_ = abstract_model(cfg, "lm")
        value_apply, critic, *_ = abstract_model(cfg, "value")
        p = c.ppo
        opt = optim.two_optimizers(
            optim.block_optimizer(p, c.train, p.policy_lr, 1000),
            optim.block_optimizer(p, c.train, p.critic_lr, 1000),
        )
        fn = ppo.make_step_fn(lm_apply, value_apply, rollout.settings(p))
        params = {"actor": actor, "critic": critic}
        batch = {"rollout": rollout_batch(s)}
        jitted, args = train_program(fn, opt, params, batch, mesh, s.grad_accum)
        # The frozen reference and RM stay resident too (ppo.frozen_dtype, bf16 in hh_rlhf).
        frozen = cfg.replace(param_dtype="bfloat16")
        ref = abstract_model(frozen, "lm")[1]
        rmp = abstract_model(frozen, "reward")[1]
        info.update(
            param_bytes=nbytes(params),
            state_bytes=nbytes(args[0]),
            frozen_bytes=nbytes(ref) + nbytes(rmp),
        )
        return jitted, args, info
    if step == "score":
        lm_apply, actor, *_ = abstract_model(cfg, "lm")
        value_apply, critic, *_ = abstract_model(cfg, "value")
        frozen = cfg.replace(param_dtype="bfloat16")
        ref_apply, ref, *_ = abstract_model(frozen, "lm")
        rm_apply, rmp, *_ = abstract_model(frozen, "reward")
        score = rollout_scoring.make_score_fn(lm_apply, ref_apply, value_apply, rm_apply)
        fn = getattr(score, "__wrapped__", None)
        n, t, tn = s.score_rows, s.ppo_seq_len, s.ppo_response

        def score_fn(a, r, v, w, ids, mask):
            return fn(a, r, v, w, ids, mask, tn)

        models = (actor, ref, critic, rmp)
        in_sh = tuple(shd.state_shardings(mesh, x) for x in models)
        in_sh += (shd.batch_sharding(mesh, 2),) * 2
        jitted = jax.jit(score_fn, in_shardings=in_sh)
        args = (*models, _ints(n, t), _ints(n, t))
        info.update(param_bytes=sum(nbytes(x) for x in models), state_bytes=0)
        return jitted, args, info
    if step.startswith("decode"):
        # The sampler's token step (sampling._sample's loop body): the model on its decoding
        # weights (each layer's own arrays in the compute dtype, made once per generation) and
        # the per-layer cache, both read in place; the cache donated.
        b = int(step[len("decode") :])
        _, params, graphdef, rest = abstract_model(cfg, "lm")
        model = nnx.merge(graphdef, params, rest)
        weights = jax.eval_shape(lambda p: nnx.merge(graphdef, p, rest).decode_weights(), params)

        def decode(w, cache, tok):
            h, cache = llama.decode_forward(
                cfg, w, tok[:, None], jnp.ones((b, 1), jnp.int32), cache
            )
            logits = shd.constrain(llama.decode_logits(cfg, w, h)[:, 0], ("batch", "act_vocab"))
            return logits, cache

        cache = jax.eval_shape(lambda: llama.init_cache(cfg, b, s.cache_len))
        kv = shd.named_sharding(mesh, llama.CACHE_AXES, cache.k[0].shape, name="cache.k")
        cache_sh = llama.KVCache(
            k=(kv,) * cfg.num_layers,
            v=(kv,) * cfg.num_layers,
            key_mask=shd.batch_sharding(mesh, 2),
            next_pos=shd.batch_sharding(mesh, 1),
            index=shd.replicated(mesh),
        )
        jitted = jax.jit(
            decode,
            in_shardings=(
                model.decode_weight_shardings(mesh),
                cache_sh,
                shd.batch_sharding(mesh, 1),
            ),
            out_shardings=(shd.batch_sharding(mesh, 2), cache_sh),
            donate_argnums=1,
        )
        # What a step reads whole: every layer, the final norm and the LM head (of the embedding
        # table it reads B rows; the table is an input but not counted here).
        read = nbytes(weights) - nbytes(weights["embed"])
        info.update(param_bytes=read, state_bytes=0, cache_bytes=nbytes(cache))
        return jitted, (weights, cache, _ints(b)), info
    raise SystemExit(f"unknown step {step!r}; expected one of {STEPS}.")


# --------------------------------------------------------------------------------------------
# Model FLOPs on paper (for the ratio to the compiled count, and MFU).
# --------------------------------------------------------------------------------------------


def forward_flops(cfg: llama.LlamaConfig, tokens: int, seq: int, head: str) -> float:
    """Matmul FLOPs of one forward of ``tokens`` tokens in sequences of ``seq`` (the code
    computes the full T x T score matrix: no causal saving)."""
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = 2 * e * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 2 * 3 * e * f
    attn = 2 * 2 * seq * cfg.num_heads * d  # QK^T and PV per token
    per_tok = cfg.num_layers * (per_layer + attn)
    per_tok += 2 * e * (cfg.vocab_size if head == "lm" else 1)
    return float(per_tok * tokens)


def model_flops(step: str, cfg: llama.LlamaConfig, s: Shapes) -> float:
    """Model FLOPs of the whole step (all devices; no rematerialisation): training = 3 x forward."""
    if step == "rm":
        return 3 * forward_flops(cfg, 2 * s.n * s.seq_len, s.seq_len, "reward")
    if step == "meta1":  # fwd+bwd over the meta batch (ascent), fwd+bwd over the pairs
        return 3 * forward_flops(cfg, (2 * s.n + s.m * s.k) * s.seq_len, s.seq_len, "reward")
    if step == "ppo":
        toks = s.ppo_minibatch * s.ppo_seq_len
        return 3 * (
            forward_flops(cfg, toks, s.ppo_seq_len, "lm")
            + forward_flops(cfg, toks, s.ppo_seq_len, "value")
        )
    if step == "score":
        toks = s.score_rows * s.ppo_seq_len
        return sum(
            forward_flops(cfg, toks, s.ppo_seq_len, h) for h in ("lm", "lm", "value", "reward")
        )
    if step.startswith("decode"):
        return forward_flops(cfg, int(step[6:]), s.cache_len, "lm")
    return float("nan")  # meta2: a Hessian-vector product on top, no simple closed form


# --------------------------------------------------------------------------------------------
# The compiled HLO: collectives and matmul FLOPs, loop trip counts included.
# --------------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_CALLEE = re.compile(
    r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _arrays(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (dt, tuple(int(x) for x in dims.split(",") if x))
        for dt, dims in _ARRAY.findall(type_str)
        if dt in _DTYPE_BYTES
    ]


def _bytes(type_str: str) -> int:
    return sum(math.prod(s) * _DTYPE_BYTES[dt] for dt, s in _arrays(type_str))


def _split_type(rest: str) -> tuple[str, str]:
    """'(f32[2], s32[]) while(%t), ...' -> ('(f32[2], s32[])', 'while(%t), ...')."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _group_size(attrs: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:  # replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
    if m:  # iota form [groups, size]<=[N]
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:  # explicit {{0,1,2,3},{4,5,6,7}}
        return len([x for x in m.group(1).split(",") if x])
    return num_devices  # {} = every device


@dataclasses.dataclass
class _Cost:
    flops: float = 0.0
    ops: dict = dataclasses.field(default_factory=lambda: defaultdict(float))
    data: dict = dataclasses.field(default_factory=lambda: defaultdict(float))
    wire: dict = dataclasses.field(default_factory=lambda: defaultdict(float))
    static: dict = dataclasses.field(default_factory=lambda: defaultdict(int))

    def add(self, other: _Cost, times: float) -> None:
        self.flops += times * other.flops
        for name in ("ops", "data", "wire"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] += times * v
        for k, v in other.static.items():
            self.static[k] += v


def parse_hlo(text: str) -> tuple[dict[str, list[tuple[str, str, str]]], str | None]:
    """The computations of an HLO module's text, {name: [(instruction, type, rest), ...]}, and
    the name of its ENTRY computation."""
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            type_str, rest = _split_type(m.group(2))
            comps[current].append((m.group(1), type_str, rest))
    return comps, entry


def analyse_hlo(text: str, num_devices: int) -> dict[str, Any]:
    """Per-device matmul FLOPs and collectives of a compiled (SPMD-partitioned) HLO module, with
    each while body counted ``known_trip_count`` times (unknown trip counts count once, and are
    reported). Bytes per collective: ``data`` is the full (gathered / pre-scatter / reduced)
    tensor, ``wire`` the ring-algorithm bytes each device sends: all-gather and reduce-scatter
    (g-1)/g x data, all-reduce 2(g-1)/g x data, all-to-all (g-1)/g x data, a permute its data."""
    comps, entry = parse_hlo(text)
    unknown_trips = 0
    memo: dict[str, _Cost] = {}

    def cost(name: str) -> _Cost:
        nonlocal unknown_trips
        if name in memo:
            return memo[name]
        c = _Cost()
        shapes = {n: t for n, t, _ in comps.get(name, [])}
        for _, type_str, rest in comps.get(name, []):
            op = rest.split("(", 1)[0].strip()
            base = op[: -len("-start")] if op.endswith("-start") else op
            if base in COLLECTIVES and not op.endswith("-done"):
                arrs = _arrays(type_str)
                if op.endswith("-start") and len(arrs) > 1:  # (operand, result[, ...]) tuple
                    arrs = arrs[1:2]
                size = sum(math.prod(s) * _DTYPE_BYTES[dt] for dt, s in arrs)
                g = _group_size(rest, num_devices)
                if base == "reduce-scatter":
                    size *= g  # the result is one shard
                frac = (g - 1) / g if g > 1 else 0.0
                wire = {"all-reduce": 2 * frac, "collective-permute": 1.0}.get(base, frac) * size
                c.ops[base] += 1
                c.data[base] += size
                c.wire[base] += wire
                c.static[base] += 1
            elif op == "dot":
                operands = re.match(r"dot\(%?([\w.\-]+),", rest)
                lhs = _arrays(shapes.get(operands.group(1), "")) if operands else []
                cdims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
                out = _arrays(type_str)
                if lhs and out and cdims is not None:
                    contract = math.prod(
                        lhs[0][1][int(i)] for i in cdims.group(1).split(",") if i != ""
                    )
                    c.flops += 2.0 * math.prod(out[0][1]) * contract
            if op == "while":
                trip = _TRIP.search(rest)
                if trip is None:
                    unknown_trips += 1
                n = int(trip.group(1)) if trip else 1
                for kind, callee in _CALLEE.findall(rest):
                    c.add(cost(callee), n if kind == "body" else n + 1)
                continue
            branches = _BRANCHES.search(rest)
            callees = [cal for _, cal in _CALLEE.findall(rest)]
            if branches:  # one branch runs: count the most expensive
                names = [b.strip().lstrip("%") for b in branches.group(1).split(",") if b.strip()]
                callees += [max(names, key=lambda b: cost(b).flops)] if names else []
            for callee in callees:
                c.add(cost(callee), 1)
        memo[name] = c
        return c

    total = cost(entry) if entry else _Cost()
    return {
        "hlo_flops": total.flops,
        "collectives": {
            k: {
                "count": int(total.ops[k]),
                "static": int(total.static[k]),
                "bytes": int(total.data[k]),
                "wire_bytes": int(total.wire[k]),
            }
            for k in COLLECTIVES
            if total.static.get(k)
        },
        "unknown_trip_counts": unknown_trips,
    }


# Instructions that write no new buffer of their size (views, control flow, constants).
_NO_WRITE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while"}
_NO_WRITE |= {"conditional", "call", "after-all", "partition-id", "replica-id"}


def _op(rest: str) -> str:
    return rest.split("(", 1)[0].strip()


def big_writes(text: str, min_elements: int, loops_only: bool = False) -> list[dict[str, Any]]:
    """The instructions of a compiled HLO module that write an array of ``min_elements`` or more
    (a weight- or cache-sized copy when ``min_elements`` is the smallest weight's or cache
    layer's size), reached from ENTRY through while bodies, conditionals and calls (a fusion
    counts as one write of its output; its insides are not writes). An in-place update (a
    dynamic-update-slice, or a fusion around one of its output's size) writes a slice only and
    is not listed. ``loops_only``: only instructions inside a while loop (the sampler's token
    loop and what it calls; the prefill before it runs once per generation).

    Each entry: computation, instruction, ``kind`` (the op, or for a fusion the op at its root
    under bitcasts: dynamic-slice, transpose, copy, convert, ...), ``type`` (e.g.
    ``f32[768,256]``), ``elements``, ``bytes``, ``trips`` (the product of the known trip counts
    of the loops around it; 1 for a loop whose count is not known, e.g. a while_loop that stops
    on a condition)."""
    comps, entry = parse_hlo(text)
    defs = {c: {n: (t, r) for n, t, r in instrs} for c, instrs in comps.items()}

    def root_kind(comp: str, elements: int) -> str:
        instrs = comps.get(comp, [])
        if any(
            _op(r) == "dynamic-update-slice"
            and sum(math.prod(sh) for _, sh in _arrays(t)) == elements
            for _, t, r in instrs
        ):
            return "in-place"
        if not instrs:
            return "fusion"
        r = instrs[-1][2]  # the ROOT is printed last
        while _op(r) == "bitcast":
            m = re.match(r"bitcast\(%?([\w.\-]+)", r)
            if not m or m.group(1) not in defs[comp]:
                break
            r = defs[comp][m.group(1)][1]
        return _op(r)

    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int, bool]] = set()

    def walk(comp: str, trips: int, in_loop: bool) -> None:
        if (comp, trips, in_loop) in seen:
            return
        seen.add((comp, trips, in_loop))
        for name, type_str, rest in comps.get(comp, []):
            op = _op(rest)
            if op == "while":
                trip = _TRIP.search(rest)
                n = int(trip.group(1)) if trip else 1
                for _, callee in _CALLEE.findall(rest):
                    walk(callee, trips * n, True)
                continue
            if op != "fusion":
                for _, callee in _CALLEE.findall(rest):
                    walk(callee, trips, in_loop)
                branches = _BRANCHES.search(rest)
                for b in branches.group(1).split(",") if branches else []:
                    if b.strip():
                        walk(b.strip().lstrip("%"), trips, in_loop)
            if op in _NO_WRITE or op == "dynamic-update-slice" or (loops_only and not in_loop):
                continue
            arrays = _arrays(type_str) if not type_str.startswith("(") else []
            if not arrays:
                continue
            dt, shape = arrays[0]
            elements = math.prod(shape)
            if elements < min_elements:
                continue
            kind = op
            if op == "fusion":
                callee = re.search(r"calls=%?([\w.\-]+)", rest)
                kind = root_kind(callee.group(1), elements) if callee else "fusion"
                if kind == "in-place":
                    continue
            out.append(
                dict(
                    computation=comp,
                    instruction=name,
                    kind=kind,
                    type=f"{dt}[{','.join(map(str, shape))}]",
                    elements=elements,
                    bytes=elements * _DTYPE_BYTES[dt],
                    trips=trips,
                )
            )

    if entry:
        walk(entry, 1, False)
    return out


def copy_threshold(cfg: llama.LlamaConfig, step: str, s: Shapes) -> int:
    """The element count of the smallest per-layer weight matrix of ``cfg`` (and, for a decode
    step of batch B, of one layer's K or V cache): a write this large in a token step is a
    copy of a weight or of a cache layer."""
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    sizes = [e * cfg.num_heads * d, e * cfg.num_kv_heads * d, e * f]
    if step.startswith("decode"):
        sizes.append(int(step[len("decode") :]) * cfg.num_kv_heads * s.cache_len * d)
    return min(sizes)


def write_summary(writes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``big_writes`` per kind: {kind: {"count": instructions run, "bytes": bytes written}}
    (trip counts included)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "bytes": 0})
    for w in writes:
        out[w["kind"]]["count"] += w["trips"]
        out[w["kind"]]["bytes"] += w["trips"] * w["bytes"]
    return dict(out)


# --------------------------------------------------------------------------------------------
# One configuration.
# --------------------------------------------------------------------------------------------


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def run_config(
    name: str,
    preset: str,
    shapes: Shapes,
    keep_hlo: str = "",
    compiler_options: dict | None = None,
) -> dict[str, Any]:
    """Lower and compile one ``step@mesh@policy[@variant]`` from abstract inputs; its figures."""
    step, mesh_name, policy, *opts = name.split("@")
    axes = parse_mesh(mesh_name)
    ndev = math.prod(axes.values())
    if ndev > jax.device_count():
        raise SystemExit(
            f"{name}: needs {ndev} devices, {jax.device_count()} visible "
            "(METARM_SIM_DEVICES sets the simulated count)."
        )
    mesh = shd.make_mesh(axes, jax.devices()[:ndev])
    cfg = llama.preset(preset, **parse_policy(policy))
    rss0 = _current_rss_bytes()
    with variant("+".join(opts), shapes) as shapes, jax.set_mesh(mesh):
        jitted, args, info = build(step, cfg, mesh, shapes)
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile(compiler_options or None)
        t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    if keep_hlo:
        os.makedirs(keep_hlo, exist_ok=True)
        with open(
            os.path.join(keep_hlo, name.replace("@", "_").replace(":", "-") + ".hlo"), "w"
        ) as f:
            f.write(text)
    hlo = analyse_hlo(text, ndev)
    if step.startswith("decode"):  # what a token step writes of a weight's or a cache layer's size
        hlo["big_writes"] = write_summary(big_writes(text, copy_threshold(cfg, step, shapes)))
    row = {
        "config": name,
        "preset": preset,
        "step": step,
        "mesh": axes,
        "devices": ndev,
        "policy": policy,
        "variant": "+".join(opts),
        "seq_len": shapes.seq_len,
        "grad_accum": shapes.grad_accum,
        **parse_policy(policy),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "generated_code_bytes": int(mem.generated_code_size_in_bytes),
        "peak_bytes": int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        ),
        "xla_peak_bytes": int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
        "xla_flops": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "hlo_flops": hlo["hlo_flops"],
        "model_flops_per_device": model_flops(step, cfg, shapes) / ndev,
        "collectives": hlo["collectives"],
        "unknown_trip_counts": hlo["unknown_trip_counts"],
        "big_writes": hlo.get("big_writes"),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "rss_growth_bytes": max(_current_rss_bytes() - rss0, 0),
        "max_rss_bytes": max_rss_bytes(),
        **info,
    }
    if "frozen_bytes" in info:  # PPO: the frozen ref + RM are resident beside the step
        row["resident_peak_bytes"] = row["peak_bytes"] + info["frozen_bytes"] // ndev
    del compiled, lowered, jitted
    return row


def optimizer_probe(preset: str, policy: str, mesh_name: str = "1") -> list[dict]:
    """Temp bytes of the optimizer phase alone (state + a gradient in, new state out, donated),
    in five forms: plain optax; + the NaN guard as where-selects (as loop.make_train_step);
    + the update-norm metric; both; and the guard as one lax.cond. Isolates what the loop's
    guard and metrics cost beyond the update itself."""
    import optax

    axes = parse_mesh(mesh_name)
    mesh = shd.make_mesh(axes, jax.devices()[: math.prod(axes.values())])
    cfg = llama.preset(preset, **parse_policy(policy))
    rows = []
    with jax.set_mesh(mesh):
        _, params, *_ = abstract_model(cfg, "reward")
        opt, _ = optim.optimizer(_paper_config().train, 1000)
        sh = loop.state_shardings(mesh, params, opt)
        state = jax.eval_shape(lambda p: loop.init_state(p, opt, 0, sh), params)

        def update(s, g):
            u, o = opt.update(g, s["opt_state"], s["params"])
            return {**s, "params": optax.apply_updates(s["params"], u), "opt_state": o}, u

        def variant_fn(guard: str, unorm: bool):
            def fn(s, g):
                finite = loop.all_finite(g)
                if guard == "cond":
                    return jax.lax.cond(
                        finite,
                        lambda s: (lambda n, u: (n, tree.global_norm(u)))(*update(s, g)),
                        lambda s: (s, jnp.float32(0)),
                        s,
                    )
                new, u = update(s, g)
                if guard == "where":
                    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, s)
                return new, (tree.global_norm(u) if unorm else finite)

            return fn

        forms = (
            ("plain optax update", "", False),
            ("+ NaN guard (where)", "where", False),
            ("+ update_norm", "", True),
            ("+ both (as make_train_step)", "where", True),
            ("guard as lax.cond + update_norm", "cond", True),
        )
        for name, guard, unorm in forms:
            jitted = jax.jit(
                variant_fn(guard, unorm),
                in_shardings=(sh, shd.state_shardings(mesh, params)),
                donate_argnums=0,
            )
            mem = jitted.lower(state, params).compile().memory_analysis()
            rows.append(
                {
                    "form": name,
                    "argument_bytes": int(mem.argument_size_in_bytes),
                    "temp_bytes": int(mem.temp_size_in_bytes),
                }
            )
            print(
                f"optimizer phase, {preset} {policy} on {mesh_name}: {name:32s} "
                f"temp {_gb(mem.temp_size_in_bytes):>6s} GiB (state + grads "
                f"{_gb(mem.argument_size_in_bytes)} GiB)",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------


def _gb(x: float) -> str:
    return f"{x / GiB:.1f}"


def _coll(row: dict, kind: str) -> str:
    c = row["collectives"].get(kind)
    return f"{c['count']} / {_gb(c['bytes'])}" if c else "-"


def fits(row: dict, limit_gib: float) -> str:
    peak = row.get("resident_peak_bytes", row["peak_bytes"])
    return "yes" if peak <= limit_gib * GiB else "no"


def markdown(rows: list[dict]) -> str:
    head = (
        "| config | params GiB | arg GiB | out GiB | temp GiB | alias GiB | peak GiB/dev "
        "| fits 141 / 80 GB | TFLOP/dev (HLO) | XLA TFLOP | model TFLOP/dev "
        "| all-gather n / GiB | reduce-scatter n / GiB | all-reduce n / GiB | compile s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        peak = _gb(r["peak_bytes"])
        if "resident_peak_bytes" in r:
            peak += f" (+frozen {_gb(r['resident_peak_bytes'])})"
        lines.append(
            f"| {r['config']} | {_gb(r['param_bytes'])} | {_gb(r['argument_bytes'])} "
            f"| {_gb(r['output_bytes'])} | {_gb(r['temp_bytes'])} | {_gb(r['alias_bytes'])} "
            f"| {peak} | {fits(r, 141e9 / GiB)} / {fits(r, 80e9 / GiB)} "
            f"| {r['hlo_flops'] / 1e12:.2f} | {r['xla_flops'] / 1e12:.2f} "
            f"| {r['model_flops_per_device'] / 1e12:.2f} | {_coll(r, 'all-gather')} "
            f"| {_coll(r, 'reduce-scatter')} | {_coll(r, 'all-reduce')} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def print_row(r: dict) -> None:
    print(
        f"{r['config']:32s} arg {_gb(r['argument_bytes']):>6s} out {_gb(r['output_bytes']):>6s} "
        f"temp {_gb(r['temp_bytes']):>6s} alias {_gb(r['alias_bytes']):>6s} "
        f"peak {_gb(r['peak_bytes']):>6s} GiB/dev | HLO {r['hlo_flops'] / 1e12:8.2f} "
        f"XLA {r['xla_flops'] / 1e12:8.2f} model {r['model_flops_per_device'] / 1e12:8.2f} "
        f"TFLOP/dev | compile {r['compile_s']:5.1f}s | maxRSS {_gb(r['max_rss_bytes'])} GiB",
        flush=True,
    )
    for kind, c in r["collectives"].items():
        print(
            f"    {kind:20s} {c['count']:6d} per step ({c['static']} in the HLO text) "
            f"{_gb(c['bytes']):>8s} GiB data, {_gb(c['wire_bytes']):>8s} GiB sent per device",
            flush=True,
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="llama2_7b")
    ap.add_argument("--configs", default="all", help="comma list of step@mesh@policy or sets")
    ap.add_argument("--seq-len", type=int, default=Shapes.seq_len, help="RM sequence length")
    ap.add_argument("--ppo-seq-len", type=int, default=Shapes.ppo_seq_len)
    ap.add_argument("--ppo-response", type=int, default=Shapes.ppo_response)
    ap.add_argument("--cache-len", type=int, default=Shapes.cache_len)
    ap.add_argument("--n", type=int, default=Shapes.n)
    ap.add_argument("--m", type=int, default=Shapes.m)
    ap.add_argument("--k", type=int, default=Shapes.k)
    ap.add_argument("--ppo-minibatch", type=int, default=Shapes.ppo_minibatch)
    ap.add_argument("--score-rows", type=int, default=Shapes.score_rows)
    ap.add_argument("--out", default="", help="write rows to this .json (and a .md beside it)")
    ap.add_argument("--keep-hlo", default="", help="write each compiled HLO into this folder")
    ap.add_argument("--list", action="store_true", help="print the configurations and stop")
    ap.add_argument(
        "--optimizer-probe",
        default="",
        metavar="POLICY[@MESH]",
        help="only compile the optimizer phase in five forms (see optimizer_probe) and stop",
    )
    ap.add_argument(
        "--fast-compile",
        action="store_true",
        help="LLVM at -O0 (xla_backend_optimization_level=0): same HLO, buffers and collectives, "
        "about half the compile time; compile times are then not the default's",
    )
    a = ap.parse_args(argv)
    shapes = Shapes(
        n=a.n,
        m=a.m,
        k=a.k,
        seq_len=a.seq_len,
        ppo_minibatch=a.ppo_minibatch,
        ppo_seq_len=a.ppo_seq_len,
        ppo_response=a.ppo_response,
        score_rows=a.score_rows,
        cache_len=a.cache_len,
    )
    if a.optimizer_probe:
        policy, _, mesh_name = a.optimizer_probe.partition("@")
        return optimizer_probe(a.preset, policy, mesh_name or "1")
    configs = expand_configs(a.configs)
    if a.list:
        print("\n".join(configs))
        return []
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, "
        f"preset {a.preset}, {len(configs)} configurations, shapes {dataclasses.asdict(shapes)}",
        flush=True,
    )
    rows = []
    t0 = time.perf_counter()
    for c in configs:
        row = run_config(c, a.preset, shapes, a.keep_hlo, FAST if a.fast_compile else None)
        rows.append(row)
        print_row(row)
        if a.out:
            _write(a.out, rows, shapes)
    print(f"\n{len(rows)} configurations in {time.perf_counter() - t0:.0f} s")
    print(markdown(rows))
    return rows


def _write(path: str, rows: list[dict], shapes: Shapes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    base = path[: -len(".json")] if path.endswith(".json") else path
    meta = {"jax": jax.__version__, "platform": jax.devices()[0].platform}
    with open(base + ".json", "w") as f:
        json.dump({"shapes": dataclasses.asdict(shapes), **meta, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
