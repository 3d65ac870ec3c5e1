"""Array and pytree helpers shared by the losses and the metrics (pure jax)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def upcast(x: jax.Array) -> jax.Array:
    """bf16/f16 (and ints) -> f32; f32 and f64 unchanged."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def dot(a: PyTree, b: PyTree) -> jax.Array:
    """Σ over leaves of <a, b>, in float32. An elementwise product and a sum, not ``jnp.vdot``:
    vdot flattens its operands, and a flattened FSDP-sharded weight cannot stay sharded, so
    every norm would all-gather the whole tensor onto every device."""
    return sum(
        (
            jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        ),
        jnp.float32(0),
    )


def global_norm(a: PyTree) -> jax.Array:
    """‖a‖ over every leaf, in float32 (the gradient-norm metric of every stage)."""
    return jnp.sqrt(dot(a, a))


def cosine(a: PyTree, b: PyTree, norm_a: jax.Array, norm_b: jax.Array) -> jax.Array:
    """cos(a, b); 0 when either is the zero vector (e.g. J = 0 for a batch with no pairs)."""
    denom = norm_a * norm_b
    return jnp.where(denom > 0, dot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)
