"""The mesh and the ONE table of logical-axis -> mesh-axis rules.

Every parameter declares logical axis names where it is created (``nnx.Param(..., axes=(...))``);
every key activation is constrained with :func:`constrain`. The rules below turn those names into
``PartitionSpec``s on a mesh with axes ``data``, ``fsdp`` and ``tensor``. The reward model, policy,
critic, reference model, sampler KV cache and data batches all use this one table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metarm_jax.runtime.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
# Axes that split the batch (data parallelism; fsdp also shards the weights).
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: tuple[tuple[str, Any], ...] = (
    # weights
    ("layers", None),  # stacked decoder layers (scanned)
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("head_out", None),  # the scalar reward / value head's size-1 output dim
    # activations
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
    # KV cache
    ("cache_batch", BATCH_AXES),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
)
_RULES = dict(RULES)


class ShardingError(UserError):
    """A weight or activation that the sharding table cannot place."""


def logical_to_spec(axes: Sequence[str | None], *, name: str = "<array>") -> P:
    """PartitionSpec for logical axis names; a name without a rule is a loud error."""
    spec = []
    for ax in axes:
        if ax is None:
            spec.append(None)
            continue
        if ax not in _RULES:
            raise ShardingError(
                f"{name}: logical axis {ax!r} has no rule in metarm_jax.sharding.RULES "
                f"(known: {sorted(_RULES)}); add a rule for it."
            )
        spec.append(_RULES[ax])
    return P(*spec)


def _mesh_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def named_sharding(
    mesh: Mesh,
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    *,
    name: str = "<array>",
) -> NamedSharding:
    """NamedSharding for an array with these logical axes; checks divisibility when shape given."""
    if shape is not None and len(shape) != len(axes):
        raise ShardingError(
            f"{name}: shape {tuple(shape)} has {len(shape)} dims but logical axes "
            f"{tuple(axes)} name {len(axes)}."
        )
    spec = logical_to_spec(axes, name=name)
    if shape is not None:
        for dim, ax, entry in zip(shape, axes, spec):
            n = _mesh_size(mesh, entry)
            if dim % n:
                raise ShardingError(
                    f"{name}: dimension {ax!r} of size {dim} is not divisible by mesh axes "
                    f"{entry!r} of total size {n} (mesh {dict(mesh.shape)}); choose a mesh whose "
                    f"{entry!r} size divides {dim}."
                )
    return NamedSharding(mesh, spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(mesh: Mesh, state) -> Any:
    """Shardings for an nnx.State (or any pytree of nnx.Variables carrying ``axes`` metadata).

    The result is a pytree prefix of ``state`` (one NamedSharding per Variable), usable as jit
    in/out shardings and with ``jax.device_put``.
    """

    def one(path, var):
        pname = jax.tree_util.keystr(path, simple=True, separator=".")
        if not _is_variable(var):
            raise ShardingError(f"{pname}: expected an nnx.Variable, got {type(var).__name__}.")
        axes = var.get_metadata().get("axes")
        if axes is None:
            raise ShardingError(
                f"parameter {pname} declares no logical axes (axes=...); "
                "every weight must name its axes so the sharding table can place it."
            )
        return named_sharding(mesh, axes, var.get_value().shape, name=f"parameter {pname}")

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Data-parallel sharding: leading (batch) dim over ('data','fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(mesh: Mesh, batch: Any) -> Any:
    """Host batch (this process's rows) -> global jax.Arrays split over the data axes: the one
    path every stage's batches take onto the mesh.

    On several processes each host buckets its own rows, so their shapes may differ along some
    axes: every host-numpy leaf is padded at the end of each such axis, with zeros, to the
    longest of any host (one small all-gather of the sizes). Which axes may grow the batch
    declares: a node of the batch with a ``pad_axes()`` method (``core.packed.Packing``) gives
    them for each of its leaves; any other leaf of rank >= 2 pads its last axis (the sequence
    length: its attention mask marks the zeros as padding, and positions come from the masks,
    so the padding side does not matter). A leaf that is already a jax.Array (a StateSource's
    device batch) is a global array: it is only placed on the batch sharding (a no-op when it is
    there already)."""
    if jax.process_count() > 1:
        batch = _pad_to_most_of_any_host(batch)

    def one(x):
        sh = batch_sharding(mesh, np.ndim(x))
        if isinstance(x, jax.Array):
            return jax.device_put(x, sh)
        return jax.make_array_from_process_local_data(sh, np.asarray(x))

    return jax.tree.map(one, batch)


def to_host(tree: Any) -> Any:
    """jax.Arrays -> numpy with their global value on every process (an all-gather across
    hosts for an array sharded over several; a plain device_get otherwise)."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def pad_axes(batch: Any) -> list[tuple[int, ...]]:
    """For each leaf of ``batch`` (``jax.tree.leaves`` order), the axes a host may pad with zeros
    (``global_batch``): as its node's ``pad_axes()`` declares, else the last axis of rank >= 2."""
    declares = lambda x: callable(getattr(x, "pad_axes", None))
    out: list[tuple[int, ...]] = []
    for node in jax.tree.leaves(batch, is_leaf=declares):
        if declares(node):
            out += node.pad_axes()
        else:
            out.append((np.ndim(node) - 1,) if np.ndim(node) >= 2 else ())
    return out


def _pad_to_most_of_any_host(batch: Any) -> Any:
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(batch)
    axes = pad_axes(batch)
    slots = [(i, a) for i, x in enumerate(leaves) if not isinstance(x, jax.Array) for a in axes[i]]
    if not slots:
        return batch
    mine = np.asarray([np.shape(leaves[i])[a] for i, a in slots], np.int32)
    most = np.max(multihost_utils.process_allgather(mine), axis=0)
    for (i, a), n in zip(slots, most):
        x = np.asarray(leaves[i])
        if x.shape[a] < n:
            width = [(0, 0)] * x.ndim
            width[a] = (0, int(n) - x.shape[a])
            leaves[i] = np.pad(x, width)
    return jax.tree.unflatten(treedef, leaves)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def dp_size(mesh: Mesh) -> int:
    """Number of ways the batch is split."""
    return _mesh_size(mesh, BATCH_AXES)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Sizes for (data, fsdp, tensor); one size may be -1 to take the remaining devices."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ShardingError(f"mesh: unknown axis {sorted(unknown)}; the axes are {MESH_AXES}.")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ShardingError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
    if any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(
            f"mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}."
        )
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ShardingError(
                f"mesh: {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices "
                f"({num_devices} is not divisible by {known})."
            )
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ShardingError(
            f"mesh: {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
            f"{num_devices} are available; set the sizes so their product is {num_devices} "
            f"(or use -1 for one axis)."
        )
    return tuple(sizes)


def make_mesh(
    shape: Mapping[str, int] | None = None, devices: Iterable[jax.Device] | None = None
) -> Mesh:
    """The ('data','fsdp','tensor') mesh. Works multi-host: uses all global devices by default.

    Axes are Auto (GSPMD propagation), so jit in/out shardings and sharding constraints drive
    the layout.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(dict(shape or {"data": -1}), len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op when no mesh is active (plain 1-device use)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    spec = logical_to_spec(axes)
    # Drop a split that does not divide (e.g. batch 1 while sampling) instead of failing.
    spec = P(*[e if x.shape[i] % _mesh_size(mesh, e) == 0 else None for i, e in enumerate(spec)])
    return jax.lax.with_sharding_constraint(x, spec)
