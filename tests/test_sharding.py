"""The sharding table on 8 simulated CPU devices: layout as the table says, and the same numbers
as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from metarm_jax import sharding
from metarm_jax.models import hf, llama

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    path = tmp_path_factory.mktemp("ckpt")
    hf.save_hf(llama.create(llama.preset("tiny"), "reward", seed=3), str(path))
    return str(path)


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, (8, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    return ids, mask


def _loss_and_grads(model, ids, mask, mesh=None):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, ids, mask):
        r = nnx.merge(graphdef, params)(ids, mask)
        return jnp.sum(jnp.tanh(r) * jnp.arange(1, r.shape[0] + 1)), r

    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    if mesh is None:
        (l, r), g = fn(params, jnp.asarray(ids), jnp.asarray(mask))
        return l, r, g
    bs = sharding.batch_sharding(mesh, 2)
    with jax.set_mesh(mesh):
        (l, r), g = fn(params, jax.device_put(ids, bs), jax.device_put(mask, bs))
    return l, r, g


@pytest.fixture(scope="module")
def reference(checkpoint):
    model = hf.load_hf(checkpoint, "reward")
    return _loss_and_grads(model, *_batch())


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_layout_and_numbers_match_one_device(checkpoint, reference, shape):
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
    model = hf.load_hf(checkpoint, "reward", mesh=mesh)
    _, state = nnx.split(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        x = var.get_value()
        want = sharding.logical_to_spec(var.get_metadata()["axes"])
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh, path
        assert x.sharding.spec == want, (path, x.sharding.spec, want)
        # each device holds only its shard
        shard_shape = x.sharding.shard_shape(x.shape)
        assert all(s.data.shape == shard_shape for s in x.addressable_shards), path
    # a weight that the table splits really is split when the mesh has fsdp or tensor ways
    q = model.layers.q.get_value()
    assert (q.sharding.shard_shape(q.shape) != q.shape) == (shape[1] * shape[2] > 1)

    ref_loss, ref_r, ref_g = reference
    loss, r, g = _loss_and_grads(model, *_batch(), mesh=mesh)
    np.testing.assert_allclose(np.asarray(r), np.asarray(ref_r), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    flat_ref = dict(nnx.to_flat_state(ref_g))
    for path, var in nnx.to_flat_state(g):
        a, b = np.asarray(var.get_value()), np.asarray(flat_ref[path].get_value())
        np.testing.assert_allclose(
            a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b).max()), err_msg=str(path)
        )


def test_random_init_is_created_sharded():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    model = llama.create(llama.preset("tiny"), "lm", mesh=mesh)
    emb = model.embed.get_value()
    assert emb.sharding.spec == P("tensor", "fsdp")
    # same values as the unsharded init with the same seed
    ref = llama.create(llama.preset("tiny"), "lm")
    np.testing.assert_allclose(np.asarray(emb), np.asarray(ref.embed.get_value()), rtol=1e-6)


def test_unknown_logical_axis_is_a_loud_error():
    with pytest.raises(
        sharding.ShardingError, match=r"layers.foo: logical axis 'experts' has no rule"
    ):
        sharding.logical_to_spec(("experts", "embed"), name="layers.foo")


def test_indivisible_weight_names_the_parameter():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    # tiny has 2 kv heads: they cannot be split 4 ways
    with pytest.raises(
        sharding.ShardingError,
        match=r"parameter layers.k: dimension 'kv_heads' of size 2 is not divisible",
    ):
        llama.create(llama.preset("tiny"), "lm", mesh=mesh)


def test_weight_without_axes_is_an_error():
    class Bad(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((4, 4)))

    mesh = sharding.make_mesh({"data": 8})
    with pytest.raises(sharding.ShardingError, match="parameter w declares no logical axes"):
        sharding.state_shardings(mesh, nnx.split(Bad())[1])


def test_mesh_shapes_resolve_and_fail_clearly():
    assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.resolve_mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(sharding.ShardingError, match="uses 6 devices but 8 are available"):
        sharding.resolve_mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(sharding.ShardingError, match="at most one axis may be -1"):
        sharding.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(sharding.ShardingError, match="unknown axis"):
        sharding.resolve_mesh_shape({"model": 8}, 8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.dp_size(mesh) == 4


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 3))
    assert sharding.constrain(x, ("batch", None)) is x


def test_hosts_pad_the_axes_their_batch_declares(monkeypatch):
    """global_batch on two hosts: each pads, with zeros, the axes its batch declares (a Packing:
    its row length, and its rows when ``pad_rows``; any other leaf of rank >= 2: its last axis)
    to the longest of either host, and nothing else. The padded packed SFT batch gives the same
    loss and gradient (empty rows hold no token)."""
    from jax.experimental import multihost_utils

    from metarm_jax.core.packed import Packing
    from metarm_jax.data import packing
    from metarm_jax.train import sft

    rng = np.random.default_rng(0)
    ex = lambda n: (rng.integers(3, 64, n).astype(np.int32), np.ones(n, np.int32))

    def host(sft_lengths, pair_length):
        pairs = packing.pack_pairs(
            {
                "chosen_ids": rng.integers(3, 64, (2, pair_length)).astype(np.int32),
                "chosen_mask": np.ones((2, pair_length), np.int32),
                "rejected_ids": rng.integers(3, 64, (2, pair_length)).astype(np.int32),
                "rejected_mask": np.ones((2, pair_length), np.int32),
                "margin": np.zeros(2, np.float32),
            },
            (8, 16),
            0,
        )
        rows = packing.pack_examples([ex(n) for n in sft_lengths], (8, 16), 0)
        return {"sft": {packing.KEY: rows}, "pref": pairs, "ids": np.zeros((2, pair_length))}

    a, b = host([1] * 8, 3), host([12, 11, 10, 9, 7, 5, 4, 2], 6)
    assert a["sft"]["packed"].ids.shape == (1, 8) and b["sft"]["packed"].ids.shape == (4, 16)
    assert sharding.pad_axes(a["sft"]) == [(0, 1)] * 4  # ids, segments, positions, loss mask
    # pairs: ids, segments, positions, branches, prev by length; read_at [n, 2] not at all
    assert sharding.pad_axes(a["pref"]) == [(), (1,), (1,), (1,), (1,), (), (1,)]
    assert sharding.pad_axes(a["ids"]) == [(1,)]

    def sizes(batch):
        leaves = jax.tree.leaves(batch)
        return [np.shape(x)[i] for x, ax in zip(leaves, sharding.pad_axes(batch)) for i in ax]

    both = np.stack([sizes(a), sizes(b)]).astype(np.int32)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda mine: both)
    pa, pb = sharding._pad_to_most_of_any_host(a), sharding._pad_to_most_of_any_host(b)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert x.shape == y.shape
    rows = pa["sft"]["packed"]
    assert isinstance(rows, Packing) and rows.pad_rows and rows.ids.shape == (4, 16)
    assert pa["pref"]["packed"].read_at.shape == (2, 2) and pa["ids"].shape == (2, 6)
    assert pa["pref"]["margin"].shape == (2,)
    for name in ("ids", "segment_ids", "positions", "loss_mask"):
        x = getattr(rows, name)
        np.testing.assert_array_equal(x[:1, :8], getattr(a["sft"]["packed"], name))
        assert not x[1:].any() and not x[:, 8:].any(), name

    model = llama.create(llama.preset("tiny", vocab_size=64), "lm", seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    apply = lambda p, ids, mask, packing=None: nnx.merge(graphdef, p)(ids, mask, packing)
    grown = {"packed": jax.tree.map(lambda x: np.pad(x, [(0, 8), (0, 0)]), b["sft"]["packed"])}
    f = jax.jit(jax.value_and_grad(lambda p, x: sft.sft_loss_on_batch(apply, p, x), has_aux=True))
    (loss, m), g = f(params, jax.tree.map(jnp.asarray, b["sft"]))
    (loss2, m2), g2 = f(params, jax.tree.map(jnp.asarray, grown))
    assert float(m2["sft/num_tokens"]) == float(m["sft/num_tokens"]) > 0
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g2), jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
