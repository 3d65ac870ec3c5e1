"""The compiled decode loop reads the weights and the KV cache where they are (issue 24).

The sampler's program (``sampling.generate``'s jitted function: the prefill, then a while loop
of token steps) is compiled for a mid-size model on the CPU and its optimized HLO read with
``bench/compile_7b.big_writes``: inside the token loop no instruction may write an array the
size of a layer's weight or of a layer's K or V cache (the in-place cache update writes one
slot and is not counted). On the code before per-layer decoding weights every step wrote a
copy of every layer's weights (the layer scan's dynamic slices) and a transposed copy of every
layer's K and V; on a GPU those were the fusions in front of every cuBLAS call. The jaxpr
checks say the same of the casts: decoding fp32 weights in bf16 (PPO's actor) casts each weight
once, before the loop, and the embedding table is never cast whole before its lookup.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarm_jax.generation import sampling
from metarm_jax.models import llama

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compile_7b.py"


def _load():
    spec = importlib.util.spec_from_file_location("compile_7b", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compile_7b"] = mod
    spec.loader.exec_module(mod)
    return mod


C = _load()
# vocab 512, hidden 256, MLP 768, 4 layers, 4 heads over 2 KV heads of 64: every per-layer
# weight (32,768 to 196,608 elements) and a cache layer (4 x 2 x 96 x 64 = 49,152) is larger
# than any activation of a token step (logits 4 x 512) or of the prefill (4 x 8 x 768).
CFG = llama.LlamaConfig(512, 256, 768, 4, 4, 2, head_dim=64)
B, PROMPT, NEW = 4, 8, 88  # a 96-slot cache


def _sizes(cfg: llama.LlamaConfig, rows: int = B) -> tuple[list[tuple], int]:
    """The per-layer shapes of a layer's weight matrices (q, k, v, o, gate, up, down) and a
    cache layer's element count."""
    model = nnx.eval_shape(lambda: llama.Llama(cfg, "lm", rngs=nnx.Rngs(0)))
    shapes = [
        tuple(v.shape[1:])
        for v in vars(model.layers).values()
        if isinstance(v, nnx.Param) and len(v.shape) > 2
    ]
    return shapes, rows * cfg.num_kv_heads * (PROMPT + NEW) * cfg.head_dim


def _sampler(cfg: llama.LlamaConfig, prompts: int = B):
    """(the sampler's jitted function, its arguments) as ``sampling.generate`` builds them for
    ``prompts`` prompts (padded as it pads them)."""
    model = llama.create(cfg, "lm", seed=0)
    graphdef, state = nnx.split(model)
    fn = sampling._jitted(graphdef, state, None, 1, NEW, False)
    rows = sampling.padded_prompts(prompts, 1, 1)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (rows, PROMPT)).astype(np.int32)
    knobs = {
        "temperature": jnp.float32(0.8),
        "top_p": jnp.float32(0.9),
        "top_k": jnp.int32(0),
        "repetition_penalty": jnp.float32(1.1),
        "min_new_tokens": jnp.int32(0),
        "pad_id": jnp.int32(0),
        "greedy": jnp.int32(0),
    }
    args = (state, ids, np.ones_like(ids), jax.random.key(0), knobs, jnp.asarray([2], jnp.int32))
    return fn, args


def _min_elements(cfg, rows: int = B) -> int:
    shapes, cache = _sizes(cfg, rows)
    return min([math.prod(s) for s in shapes] + [cache])


@pytest.mark.parametrize("prompts", [B, 1])
def test_decode_loop_writes_no_weight_or_cache_copy(prompts):
    # one prompt: generate decodes two rows (sampling.padded_prompts), since with a size-1
    # batch dim XLA:CPU copies every layer's cache at every step
    fn, args = _sampler(CFG, prompts)
    text = fn.lower(*args).compile().as_text()
    least = _min_elements(CFG, sampling.padded_prompts(prompts, 1, 1))
    in_loop = C.big_writes(text, least, loops_only=True)
    assert in_loop == [], (
        "the token loop writes weight- or cache-sized arrays every step: "
        f"{C.write_summary(in_loop)}; e.g. {in_loop[:4]}"
    )
    # Not vacuous: the program does write weight-sized arrays, once, before the loop (each
    # layer's decoding weights are made there), and the checker sees them.
    once = C.big_writes(text, least)
    shapes, _ = _sizes(CFG)
    made = [w for w in once if w["elements"] in {math.prod(s) for s in shapes}]
    assert len(made) >= CFG.num_layers * len(shapes), C.write_summary(once)


def _eqns(jaxpr, in_loop=False):
    """(eqn, inside a while loop) for every equation, sub-jaxprs included."""
    for eqn in jaxpr.eqns:
        yield eqn, in_loop
        loop = in_loop or eqn.primitive.name == "while"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqns(sub, loop)


def _casts(jaxpr, shapes):
    """(inside a loop, operand shape) of the dtype casts of arrays of the given shapes."""
    return [
        (loop, tuple(e.invars[0].aval.shape))
        for e, loop in _eqns(jaxpr)
        if e.primitive.name == "convert_element_type"
        and tuple(getattr(e.invars[0].aval, "shape", ())) in shapes
    ]


def test_bf16_decode_of_fp32_weights_casts_them_once_before_the_loop():
    cfg = CFG.replace(dtype="bfloat16")  # fp32 weights, bf16 compute: PPO's actor
    fn, args = _sampler(cfg)
    shapes, cache = _sizes(cfg)
    stacked = {(cfg.num_layers, *s) for s in shapes}
    embed = {(cfg.vocab_size, cfg.hidden_size)}
    casts = _casts(jax.make_jaxpr(fn)(*args).jaxpr, set(shapes) | stacked | embed)
    assert [c for c in casts if c[0]] == [], "weights cast inside the token loop"
    assert [c for c in casts if c[1] in embed] == [], "the embedding table is cast whole"
    # each layer's seven weight matrices are cast once, before the loop
    assert sum(1 for c in casts if c[1] in set(shapes)) == cfg.num_layers * len(shapes)
    # the compiled loop then writes nothing of a weight's size; XLA:CPU has no bf16 matmul, so
    # it converts each layer's bf16 K cache to fp32 for the scores (a GPU reads bf16 directly)
    text = fn.lower(*args).compile().as_text()
    in_loop = C.big_writes(text, _min_elements(cfg), loops_only=True)
    assert all(w["elements"] == cache and w["kind"] == "convert" for w in in_loop), in_loop


@pytest.mark.parametrize("tied", [False, True])
def test_forward_looks_the_embedding_up_before_casting(tied):
    cfg = llama.preset("tiny", dtype="bfloat16", tie_word_embeddings=tied)
    graphdef, state = nnx.split(llama.create(cfg, "reward"))
    ids = jnp.ones((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda s, i: nnx.merge(graphdef, s)(i))(state, ids).jaxpr
    assert _casts(jaxpr, {(cfg.vocab_size, cfg.hidden_size)}) == []
