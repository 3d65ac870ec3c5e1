"""The one sampler: KV-cache generation shared by PPO roll-outs and meta-dataset building.

    from metarm_jax.generation import sampling
    settings = sampling.settings(config.sampling)     # or sampling.settings(max_new_tokens=64)
    out = sampling.generate(model, prompt_ids, prompt_mask, rng, settings, num_samples=5)
    out.tokens          # [B*num_samples, T_new] int32; rows i*n:(i+1)*n are prompt i's samples
    out.mask            # [B*num_samples, T_new] int32; 1 for generated tokens (stop token incl.)
    out.logprobs        # [B*num_samples, T_new] log p under the distribution sampled from
    out.model_logprobs  # [B*num_samples, T_new] log p of the token under the raw model (T=1)

How it runs (one jitted function per prompt-length bucket):
1. prompts are re-packed on the host to the LEFT and padded to a power-of-two length bucket
   (at least ``prompt_bucket_min``), and the batch to a multiple of the data-parallel size, so a
   run compiles a handful of shapes;
2. one prefill per prompt, then the cache is repeated ``num_samples`` times along the batch
   (prompt-major), so the prompt is never recomputed per sample;
3. a ``lax.while_loop`` samples one token per step and stops when every row has emitted a stop
   token or at ``max_new_tokens``.

Logits processing follows HF transformers' ``generate`` order: repetition penalty (on every real
prompt token and every generated token: a positive logit is divided by the penalty, a negative
one multiplied), min-new-tokens (stop tokens get -inf), then temperature, top-k, top-p.
``temperature == 0`` is greedy (argmax after the repetition penalty; no top-k/top-p).

Settings. ``SamplingSettings`` (frozen; temperature, top-p, top-k, repetition penalty, new-token
bounds, extra stop tokens, prompt bucket) is built by ``settings()`` from a ``config.sampling``
block, or from ``defaults.sampling()`` with some values changed: every default lives there only.
It checks its values when built.

Log-probabilities. ``logprobs`` are those of the processed distribution actually sampled from
(after penalty, temperature, top-k and top-p; for greedy, the penalised logits at temperature 1);
use them for importance weights of *this* sampler. ``model_logprobs`` are ``log_softmax`` of the
raw policy logits (temperature 1, no filtering) at the sampled token: the ``log π_θ(y_t | ...)``
that PPO's ratio and KL penalty use when the training step recomputes logprobs from a plain
forward pass. (TRL's PPO instead divides the recomputed logits by the sampling temperature; a PPO
step that does so must recompute with the same convention rather than use either of these.)

Weights and cache: before the prefill the jitted function makes the model's decoding weights
(``llama.Llama.decode_weights``: each layer's weights as arrays of their own in the compute dtype,
once per call), which the token steps read in place; the KV cache is one [B, KVH, S, D] buffer
per layer, written in place (tests/test_decode_hlo.py checks the compiled loop for copies).

Sharding: the decoding weights keep the layout the training put the params in, the KV cache
carries ``decode.CACHE_AXES`` and the batch/activations the ``batch``/``act_*`` names of
:mod:`metarm_jax.sharding`, i.e. the batch on ``data``/``fsdp`` and heads on ``tensor``.
Random draws use one key per output row (``fold_in(rng, row)``, then the step), so the samples of
a row do not depend on the batch padding, the mesh, or the other rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from metarm_jax import sharding as shd
from metarm_jax.config import defaults
from metarm_jax.generation.logits import process_logits, sample_rows
from metarm_jax.models import decode, llama_config
from metarm_jax.runtime.errors import UserError


class SamplingError(UserError):
    """Bad sampling arguments or prompts."""


# The one definition of each sampling knob's range: (ok, the words for it). SamplingSettings checks
# them for a caller of ``settings()``; config/rules.py applies the same to config.sampling before
# any stage runs.
LIMITS = {
    "temperature": (lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    "top_k": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "repetition_penalty": (lambda v: v > 0, "a number > 0 (1 = off)"),
}


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How ``generate`` samples: the keys of ``config.sampling`` but its seed (docs/sampling.md).
    Build it with ``settings()``; the values are checked (and typed) here."""

    temperature: float  # 0 = greedy
    top_p: float  # 1.0 = off
    top_k: int  # 0 = off
    repetition_penalty: float  # 1.0 = off; HF semantics
    max_new_tokens: int
    min_new_tokens: int  # stop tokens are masked out before this many new tokens
    stop_token_ids: tuple[int, ...]  # extra stop tokens besides the eos
    prompt_bucket_min: int  # prompt lengths are padded to max(this, next power of two)

    def __post_init__(self):
        typed = dict(
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=int(self.top_k),
            repetition_penalty=float(self.repetition_penalty),
            max_new_tokens=int(self.max_new_tokens),
            min_new_tokens=int(self.min_new_tokens),
            stop_token_ids=tuple(int(t) for t in self.stop_token_ids),
            prompt_bucket_min=int(self.prompt_bucket_min),
        )
        for name, value in typed.items():
            object.__setattr__(self, name, value)
        if self.max_new_tokens < 1:
            raise SamplingError(f"sampling.max_new_tokens={self.max_new_tokens}; it must be >= 1.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SamplingError(
                f"sampling.min_new_tokens={self.min_new_tokens} must be in [0, "
                f"max_new_tokens={self.max_new_tokens}]."
            )
        for name, (ok, words) in LIMITS.items():
            if not ok(getattr(self, name)):
                raise SamplingError(f"sampling.{name}={getattr(self, name)}: expected {words}.")


def settings(config: ml_collections.ConfigDict | None = None, **changes: Any) -> SamplingSettings:
    """The sampler's settings from a ``config.sampling`` block (None: ``defaults.sampling()``,
    where every default lives), with ``changes`` on top, e.g. ``settings(max_new_tokens=64)``.
    The block's other keys (``seed``) are not settings."""
    block = defaults.sampling() if config is None else config
    names = [f.name for f in dataclasses.fields(SamplingSettings)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise SamplingError(f"sampling.settings: unknown setting(s) {unknown}; they are {names}.")
    missing = [n for n in names if n not in block and n not in changes]
    if missing:
        raise SamplingError(
            f"config.sampling has no {missing}; a sampling block needs every key of "
            "defaults.sampling()."
        )
    return SamplingSettings(**{n: changes[n] if n in changes else block[n] for n in names})


@struct.dataclass
class SampleOutput:
    tokens: jax.Array  # [N, T_new] int32, pad_id where mask == 0
    mask: jax.Array  # [N, T_new] int32
    logprobs: jax.Array  # [N, T_new] float32, 0 where mask == 0
    model_logprobs: jax.Array  # [N, T_new] float32, 0 where mask == 0
    logits: jax.Array | None = None  # [N, T_new, V] raw model logits (only with return_logits)

    @property
    def lengths(self) -> jax.Array:
        return self.mask.sum(-1)


# ---------------------------------------------------------------------------------------------
# The jitted sampler


def _cache_constrain(cache: decode.KVCache) -> decode.KVCache:
    return decode.KVCache(
        k=tuple(shd.constrain(a, decode.CACHE_AXES) for a in cache.k),
        v=tuple(shd.constrain(a, decode.CACHE_AXES) for a in cache.v),
        key_mask=shd.constrain(cache.key_mask, ("cache_batch", "cache_length")),
        next_pos=shd.constrain(cache.next_pos, ("cache_batch",)),
        index=cache.index,
    )


def _repeat_rows(x: jax.Array, n: int, axis: int) -> jax.Array:
    return x if n == 1 else jnp.repeat(x, n, axis=axis)


def _sample(
    graphdef,
    state,
    ids,
    mask,
    rng,
    knobs,
    stop_ids,
    *,
    num_samples: int,
    max_new_tokens: int,
    return_logits: bool,
):
    """ids/mask [B, T] left-padded -> buffers for B*num_samples rows (see SampleOutput)."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    b, t = ids.shape
    n = num_samples * b
    v = cfg.vocab_size

    # The weights every step reads, made once here: each layer's own arrays in the compute
    # dtype (llama.Llama.decode_weights), so no step slices or casts a weight.
    w = model.decode_weights()

    # Prefill once per prompt; only the last position's logits are needed.
    cache = _cache_constrain(decode.init_cache(cfg, b, t + max_new_tokens))
    x, cache = decode.decode_forward(cfg, w, ids, mask, cache)
    logits = decode.decode_logits(cfg, w, x[:, -1:])[:, 0]  # [B, V]
    seen = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], ids].max(mask > 0)

    # Share the prompt's cache across its samples (prompt-major rows).
    cache = _cache_constrain(
        decode.KVCache(
            k=tuple(_repeat_rows(a, num_samples, 0) for a in cache.k),
            v=tuple(_repeat_rows(a, num_samples, 0) for a in cache.v),
            key_mask=_repeat_rows(cache.key_mask, num_samples, 0),
            next_pos=_repeat_rows(cache.next_pos, num_samples, 0),
            index=cache.index,
        )
    )
    logits = shd.constrain(_repeat_rows(logits, num_samples, 0), ("batch", "act_vocab"))
    seen = shd.constrain(_repeat_rows(seen, num_samples, 0), ("batch", None))

    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(n))
    stop_vocab = jnp.zeros((v,), bool).at[jnp.clip(stop_ids, 0, v - 1)].max(stop_ids >= 0)
    pad_id = knobs["pad_id"]
    greedy = knobs["greedy"] > 0

    def batch_buf(dtype, fill, extra=()):
        return shd.constrain(
            jnp.full((n, max_new_tokens) + extra, fill, dtype),
            ("batch", "length") + (("act_vocab",) if extra else ()),
        )

    carry = dict(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=logits,
        seen=seen,
        done=jnp.zeros((n,), bool),
        tokens=batch_buf(jnp.int32, pad_id),
        mask=batch_buf(jnp.int32, 0),
        logprobs=batch_buf(jnp.float32, 0.0),
        model_logprobs=batch_buf(jnp.float32, 0.0),
    )
    if return_logits:
        carry["all_logits"] = batch_buf(jnp.float32, 0.0, (v,))

    def cond(c):
        return (c["step"] < max_new_tokens) & ~jnp.all(c["done"])

    def body(c):
        step, done, logits = c["step"], c["done"], c["logits"]
        proc = process_logits(logits, c["seen"], knobs, stop_vocab, step)
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        tok = jax.lax.cond(
            greedy,
            lambda: jnp.argmax(proc, axis=-1).astype(jnp.int32),
            lambda: sample_rows(keys, proc),
        )
        lp = jnp.take_along_axis(jax.nn.log_softmax(proc), tok[:, None], -1)[:, 0]
        mlp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], -1)[:, 0]
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        out = dict(c)
        out["tokens"] = c["tokens"].at[:, step].set(tok)
        out["mask"] = c["mask"].at[:, step].set(live.astype(jnp.int32))
        out["logprobs"] = c["logprobs"].at[:, step].set(jnp.where(live, lp, 0.0))
        out["model_logprobs"] = c["model_logprobs"].at[:, step].set(jnp.where(live, mlp, 0.0))
        if return_logits:
            out["all_logits"] = c["all_logits"].at[:, step].set(logits)
        out["seen"] = c["seen"].at[jnp.arange(n), tok].set(True)
        out["done"] = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        # Next step's logits (the last iteration's forward is unused; it keeps the loop simple).
        h, cache = decode.decode_forward(
            cfg, w, tok[:, None], jnp.ones((n, 1), jnp.int32), c["cache"]
        )
        out["cache"] = _cache_constrain(cache)
        out["logits"] = shd.constrain(decode.decode_logits(cfg, w, h)[:, 0], ("batch", "act_vocab"))
        out["step"] = step + 1
        return out

    c = jax.lax.while_loop(cond, body, carry)
    result = (c["tokens"], c["mask"], c["logprobs"], c["model_logprobs"])
    return result + ((c["all_logits"],) if return_logits else ())


_JIT_CACHE: dict[Any, Any] = {}


def _jitted(
    graphdef, state, mesh: Mesh | None, num_samples: int, max_new_tokens: int, return_logits: bool
):
    key = (graphdef, jax.tree.structure(state), mesh, num_samples, max_new_tokens, return_logits)
    if key not in _JIT_CACHE:
        fn = lambda *a: _sample(
            graphdef,
            *a,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            return_logits=return_logits,
        )
        if mesh is None:
            _JIT_CACHE[key] = jax.jit(fn)
        else:
            rep = shd.replicated(mesh)
            outs = [shd.batch_sharding(mesh, 2)] * 4
            if return_logits:
                outs.append(shd.batch_sharding(mesh, 3))
            _JIT_CACHE[key] = jax.jit(
                fn,
                in_shardings=(
                    shd.state_shardings(mesh, state),
                    shd.batch_sharding(mesh, 2),
                    shd.batch_sharding(mesh, 2),
                    rep,
                    rep,
                    rep,
                ),
                out_shardings=tuple(outs),
            )
    return _JIT_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Host-side preparation


def bucket_length(n: int, minimum: int) -> int:
    """Prompt length bucket: max(minimum, next power of two >= n)."""
    return max(int(minimum), 1 << max(int(n) - 1, 0).bit_length())


def left_pack(ids: np.ndarray, mask: np.ndarray, width: int, pad_id: int):
    """Move every row's real tokens (mask 1, order kept) to the right end of a [B, width] array."""
    order = np.argsort(mask > 0, axis=1, kind="stable")  # pads first, then real tokens
    ids = np.take_along_axis(ids, order, 1)
    mask = np.take_along_axis(mask, order, 1)
    ids = np.where(mask > 0, ids, pad_id)
    t = ids.shape[1]
    if t >= width:
        return ids[:, t - width :], mask[:, t - width :]
    pad = ((0, 0), (width - t, 0))
    return np.pad(ids, pad, constant_values=pad_id), np.pad(mask, pad)


def padded_prompts(b: int, dp: int, num_samples: int) -> int:
    """How many prompts ``generate`` runs for ``b``: a multiple of the data-parallel size ``dp``,
    and at least two decode rows. (With one row, XLA:CPU fuses each layer's in-place cache
    update twice, the second time behind the bitcast that drops the size-1 batch dim for the
    attention's matmul, and so copies every layer's K and V cache at every step; a second row
    costs one more row of cache.)"""
    b_pad = -(-b // dp) * dp
    return 2 if b_pad * num_samples < 2 else b_pad


def _mesh_of(state) -> Mesh | None:
    leaf = jax.tree.leaves(state)[0]
    s = getattr(leaf, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh.size > 1:
        return s.mesh
    return None


def _split_model(model):
    if isinstance(model, nnx.Module):
        return nnx.split(model)
    if isinstance(model, (tuple, list)) and len(model) >= 2:
        graphdef, *states = model
        if len(states) == 1:
            return graphdef, states[0]
        return nnx.split(nnx.merge(graphdef, *states))
    raise SamplingError(
        f"generate(model=...): expected an nnx model or (graphdef, state), got "
        f"{type(model).__name__}."
    )


def generate(
    model,
    prompt_ids,
    prompt_mask,
    rng,
    settings: SamplingSettings,
    *,
    num_samples: int = 1,
    eos_id: int | None = None,
    pad_id: int | None = None,
    mesh: Mesh | None = None,
    return_logits: bool = False,
) -> SampleOutput:
    """Sample ``num_samples`` continuations of each prompt (see the module docstring).

    model: an ``lm``-head ``llama.Llama`` or its ``(graphdef, state)``; used as is (no copy), so
      on a mesh its params must be laid out by the sharding table (``llama.create`` /
      ``hf.load_hf`` with ``mesh=`` and the train state are).
    prompt_ids, prompt_mask: [B, T] host arrays, the whole batch on every process (any padding
      side; re-packed to the left on the host). Outputs are global arrays sharded by batch.
    rng: a jax key or an int seed.
    settings: ``SamplingSettings`` (``settings(config.sampling)``).
    num_samples: samples per prompt (``build_meta.k``, ``ppo.rollouts_per_query``).
    eos_id: defaults to the model's ``eos_token_id``; ``settings.stop_token_ids`` add more stop
      tokens.
    pad_id: fills ``tokens`` after a row stops; defaults to the model's ``pad_token_id`` (or 0).
    mesh: defaults to the mesh the params are sharded on (none: one device).
    return_logits: also return the raw model logits of every step (``SampleOutput.logits``).
    """
    graphdef, state = _split_model(model)
    module = model if isinstance(model, nnx.Module) else nnx.merge(graphdef, state)
    cfg: llama_config.LlamaConfig = module.cfg
    if module.head != "lm":
        raise SamplingError(f"generate() needs a model with the 'lm' head, got {module.head!r}.")
    eos_id = cfg.eos_token_id if eos_id is None else eos_id
    pad_id = (cfg.pad_token_id if cfg.pad_token_id is not None else 0) if pad_id is None else pad_id
    if not isinstance(settings, SamplingSettings):
        raise SamplingError(
            f"generate(settings=...): expected a SamplingSettings (sampling.settings(...)), got "
            f"{type(settings).__name__}."
        )
    if num_samples < 1:
        raise SamplingError(f"num_samples={num_samples}; it must be >= 1.")

    ids = np.asarray(jax.device_get(prompt_ids)).astype(np.int32)
    mask = np.asarray(jax.device_get(prompt_mask)).astype(np.int32)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise SamplingError(
            f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [batch, length]."
        )
    lengths = (mask > 0).sum(1)
    if (lengths == 0).any():
        raise SamplingError(
            f"prompt row {int(np.argmin(lengths))} has no real token (mask all "
            "0); every prompt needs at least one token (e.g. BOS)."
        )
    b = ids.shape[0]
    width = bucket_length(int(lengths.max()), settings.prompt_bucket_min)
    ids, mask = left_pack(ids, mask, width, pad_id)

    mesh = mesh if mesh is not None else _mesh_of(state)
    if mesh is not None and mesh.size == 1:
        mesh = None
    dp = 1 if mesh is None else shd.dp_size(mesh)
    b_pad = padded_prompts(b, dp, num_samples)
    if b_pad != b:  # dummy prompts (copies of row 0) after the real ones; dropped below
        ids = np.concatenate([ids, np.repeat(ids[:1], b_pad - b, 0)])
        mask = np.concatenate([mask, np.repeat(mask[:1], b_pad - b, 0)])

    greedy = settings.temperature == 0
    knobs = {
        "temperature": jnp.float32(1.0 if greedy else settings.temperature),
        "top_p": jnp.float32(1.0 if greedy else settings.top_p),
        "top_k": jnp.int32(0 if greedy else settings.top_k),
        "repetition_penalty": jnp.float32(settings.repetition_penalty),
        "min_new_tokens": jnp.int32(settings.min_new_tokens),
        "pad_id": jnp.int32(pad_id),
        "greedy": jnp.int32(greedy),
    }
    stops = sorted(set(settings.stop_token_ids) | ({int(eos_id)} if eos_id is not None else set()))
    stop_ids = jnp.asarray(stops or [-1], jnp.int32)
    if isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))

    fn = _jitted(graphdef, state, mesh, num_samples, settings.max_new_tokens, return_logits)
    if mesh is None:
        outs = fn(state, ids, mask, rng, knobs, stop_ids)
    else:
        # Every process holds the whole prompt batch; each device takes its rows (multi-host too).
        sh = shd.batch_sharding(mesh, 2)
        ids, mask = (
            jax.make_array_from_callback(a.shape, sh, lambda idx, a=a: a[idx]) for a in (ids, mask)
        )
        with jax.set_mesh(mesh):
            outs = fn(state, ids, mask, rng, knobs, stop_ids)
    if b_pad != b:
        outs = tuple(o[: b * num_samples] for o in outs)
    return SampleOutput(*outs[:4], logits=outs[4] if return_logits else None)
