"""The MetaRM step against a manual JAX composition, PyTorch autograd, finite differences, the
vanilla gradient (η = 0), and itself under jit. The reward model is a tiny embedding-bag + MLP
written twice, in JAX and in torch, reading a mean-pool and the last non-pad token."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from metarm_jax.core import losses, metarm

V, D, H, T = 11, 6, 8, 7  # vocab, embedding, hidden, sequence length
N, M, K = 3, 4, 3  # preference pairs, meta prompts, responses per meta prompt


# ------------------------------------------------------------------------------ tiny models


def jax_reward(params, ids, mask):
    """[B, T] ids and right-padded mask -> [B] rewards."""
    mask = mask.astype(params["emb"].dtype)
    e = params["emb"][ids]  # [B, T, D]
    mean = (e * mask[..., None]).sum(1) / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    last = jnp.maximum(mask.sum(-1).astype(jnp.int32) - 1, 0)
    e_last = jnp.take_along_axis(e, last[:, None, None], axis=1)[:, 0]
    h = jnp.tanh(jnp.concatenate([mean, e_last], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def torch_reward(tp, ids, mask):
    mask = mask.to(tp["emb"].dtype)
    e = tp["emb"][ids]
    mean = (e * mask[..., None]).sum(1) / mask.sum(-1, keepdim=True).clamp_min(1.0)
    last = (mask.sum(-1).long() - 1).clamp_min(0)
    e_last = e[torch.arange(ids.shape[0]), last]
    h = torch.tanh(torch.cat([mean, e_last], -1) @ tp["w1"] + tp["b1"])
    return h @ tp["w2"] + tp["b2"]


def torch_j(rewards, sample_mask):
    """Difference loss written as the paper's double sum, prompt by prompt."""
    per_prompt = []
    for p in range(rewards.shape[0]):
        real = [rewards[p, i] for i in range(rewards.shape[1]) if sample_mask[p, i]]
        if len(real) < 2:
            continue
        pairs = [torch.sigmoid((a - b).abs()) for a, b in itertools.combinations(real, 2)]
        per_prompt.append(2.0 / len(real) ** 2 * torch.stack(pairs).sum())
    return torch.stack(per_prompt).mean()


def torch_l(tp, b):
    r_w = torch_reward(tp, b["chosen_ids"], b["chosen_mask"])
    r_l = torch_reward(tp, b["rejected_ids"], b["rejected_mask"])
    return -torch.nn.functional.logsigmoid(r_w - r_l).mean()


def torch_meta_grads(params, pref, meta, eta, order):
    """Algorithm 1 in torch autograd; returns (grads, J(θ), L(θ'))."""
    tp = {
        k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
        for k, v in params.items()
    }
    tb = {k: torch.tensor(np.asarray(v)) for k, v in pref.items()}
    m, k, t = meta["input_ids"].shape
    rewards = torch_reward(
        tp,
        torch.tensor(np.asarray(meta["input_ids"])).reshape(m * k, t),
        torch.tensor(np.asarray(meta["attention_mask"])).reshape(m * k, t),
    )
    j = torch_j(rewards.reshape(m, k), np.asarray(meta["sample_mask"]))
    names = sorted(tp)
    grad_j = torch.autograd.grad(j, [tp[n] for n in names], create_graph=order == "second")
    if order == "first":
        tp_prime = {n: (tp[n] + eta * g).detach().requires_grad_() for n, g in zip(names, grad_j)}
        wrt = [tp_prime[n] for n in names]
    else:
        tp_prime = {n: tp[n] + eta * g for n, g in zip(names, grad_j)}
        wrt = [tp[n] for n in names]
    loss = torch_l(tp_prime, tb)
    grads = torch.autograd.grad(loss, wrt)
    grads = {n: g.detach().numpy() for n, g in zip(names, grads)}
    return grads, float(j.detach()), float(loss.detach())


# ------------------------------------------------------------------------------ data


def make_params(seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 5)
    return {
        "emb": jax.random.normal(ks[0], (V, D), dtype),
        "w1": jax.random.normal(ks[1], (2 * D, H), dtype) / np.sqrt(2 * D).astype(dtype),
        "b1": 0.1 * jax.random.normal(ks[2], (H,), dtype),
        "w2": jax.random.normal(ks[3], (H,), dtype),
        "b2": jnp.zeros((), dtype),
    }


def _right_padded(rng, shape):
    lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
    mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
    ids = rng.integers(1, V, size=shape).astype(np.int32) * mask
    return jnp.asarray(ids), jnp.asarray(mask)


def make_batches(seed=0):
    rng = np.random.default_rng(seed)
    cw, cm = _right_padded(rng, (N, T))
    rj, rm = _right_padded(rng, (N, T))
    pref = {"chosen_ids": cw, "chosen_mask": cm, "rejected_ids": rj, "rejected_mask": rm}
    ids, att = _right_padded(rng, (M, K, T))
    sample_mask = np.ones((M, K), np.int32)
    sample_mask[1, 2] = 0  # a prompt with 2 real samples
    sample_mask[3, 1:] = 0  # a prompt with 1 real sample: left out of J
    meta = {"input_ids": ids, "attention_mask": att, "sample_mask": jnp.asarray(sample_mask)}
    return pref, meta


def tree_flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, rtol, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ first order


def test_first_order_equals_manual_composition():
    params, (pref, meta) = make_params(), make_batches()
    eta = 0.5

    def j_manual(theta):  # per-sample reward calls, not the concatenated ones
        r = jnp.stack(
            [jax_reward(theta, meta["input_ids"][p], meta["attention_mask"][p]) for p in range(M)]
        )
        return losses.difference_loss(r, meta["sample_mask"])

    def l_manual(theta):
        return losses.bt_loss(
            jax_reward(theta, pref["chosen_ids"], pref["chosen_mask"]),
            jax_reward(theta, pref["rejected_ids"], pref["rejected_mask"]),
        )

    grad_j = jax.jit(jax.grad(j_manual))(params)
    theta_prime = jax.tree.map(lambda p, g: p + eta * g, params, grad_j)
    expected = jax.jit(jax.grad(l_manual))(theta_prime)

    got, metrics = jax.jit(
        functools.partial(metarm.meta_grads, jax_reward, order="first", center=0.0)
    )(params, pref, meta, eta)
    assert_trees_close(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["meta/J"], j_manual(params), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], l_manual(theta_prime), rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(tree_flat(expected)), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["meta/grad_J_norm"], np.linalg.norm(tree_flat(grad_j)), rtol=1e-5
    )
    a, b = tree_flat(grad_j), tree_flat(expected)
    np.testing.assert_allclose(
        metrics["meta/cos_gradJ_grad"], a @ b / np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-4
    )
    # The ascent matters: a large η moves the gradient away from the vanilla one.
    vanilla, _ = jax.jit(functools.partial(metarm.vanilla_grads, jax_reward, center=0.0))(
        params, pref
    )
    assert np.linalg.norm(tree_flat(got) - tree_flat(vanilla)) > 1e-2 * np.linalg.norm(b)


@pytest.mark.parametrize(
    "order,second_order",
    [("first", "hvp")] + [("second", s) for s in metarm.SECOND_ORDER],
)
def test_meta_grads_match_torch_autograd(order, second_order):
    """Torch differentiates through the ascent (create_graph); each of our second-order forms
    (through the ascent, or v + s∇²J v as an HVP) gives its gradient."""
    pref, meta = make_batches(seed=1)
    eta = 0.5
    with jax.enable_x64(True):
        params = make_params(seed=1, dtype=jnp.float64)
        step = jax.jit(
            functools.partial(
                metarm.meta_grads, jax_reward, order=order, second_order=second_order, center=0.0
            )
        )
        got, metrics = step(params, pref, meta, eta)
        got = jax.tree.map(np.asarray, got)
    expected, j, loss = torch_meta_grads(params, pref, meta, eta, order)
    assert_trees_close(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["meta/J"], j, rtol=1e-6)  # metrics are float32
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)


# ------------------------------------------------------------------------------ second order


def test_second_order_matches_finite_differences_and_differs_from_first():
    pref, meta = make_batches(seed=2)
    eta = 0.1
    with jax.enable_x64(True):
        params = make_params(seed=2, dtype=jnp.float64)

        @jax.jit
        def f(theta):  # L(θ + η ∇J(θ)), evaluated only: FD never differentiates through it
            grad_j = jax.grad(lambda t: metarm.meta_loss(jax_reward, t, meta))(theta)
            theta_prime = jax.tree.map(lambda p, g: p + eta * g, theta, grad_j)
            return metarm.preference_loss(jax_reward, theta_prime, pref, center=0.0)[0]

        step = functools.partial(metarm.meta_grads, jax_reward, eta=eta, center=0.0)
        g2, _ = jax.jit(functools.partial(step, order="second"))(params, pref, meta)
        g1, _ = jax.jit(functools.partial(step, order="first"))(params, pref, meta)
        rng = np.random.default_rng(0)
        eps = 1e-5
        err2, err1 = [], []
        for _ in range(4):
            v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
            fd = (
                f(jax.tree.map(lambda p, d: p + eps * d, params, v))
                - f(jax.tree.map(lambda p, d: p - eps * d, params, v))
            ) / (2 * eps)
            v_flat = tree_flat(v)
            err2.append(abs(tree_flat(g2) @ v_flat - float(fd)) / abs(float(fd)))
            err1.append(abs(tree_flat(g1) @ v_flat - float(fd)) / abs(float(fd)))
    assert max(err2) < 1e-7, err2
    assert max(err1) > 1e-3, err1  # first order is a different (approximate) gradient
    diff = np.linalg.norm(tree_flat(g2) - tree_flat(g1))
    assert diff > 1e-3 * np.linalg.norm(tree_flat(g2))


# -------------------------------------------------------------------------- η = 0, padding, jit


@pytest.mark.parametrize("order", ["first", "second"])
def test_eta_zero_is_exactly_vanilla(order):
    params, (pref, meta) = make_params(seed=3), make_batches(seed=3)
    vanilla, v_metrics = metarm.vanilla_grads(jax_reward, params, pref, center=0.0)
    got, metrics = metarm.meta_grads(
        jax_reward, params, pref, meta, eta=0.0, order=order, center=0.0
    )
    assert_trees_equal(got, vanilla)
    for key in v_metrics:
        np.testing.assert_array_equal(metrics[key], v_metrics[key])
    # Also jitted, with η a traced zero (as a train step would pass it).
    vanilla_jit, _ = jax.jit(functools.partial(metarm.vanilla_grads, jax_reward, center=0.0))(
        params, pref
    )
    step = jax.jit(functools.partial(metarm.meta_grads, jax_reward, order=order, center=0.0))
    assert_trees_equal(step(params, pref, meta, jnp.float32(0.0))[0], vanilla_jit)
    # A Python 0 skips ∇J (the eta0 control arm's fast path); a traced 0 runs the whole step.
    # Both give the vanilla gradient bit for bit, and the fast path reports a zero ascent.
    general, g_metrics = metarm.meta_grads(
        jax_reward, params, pref, meta, eta=jnp.float32(0.0), order=order, center=0.0
    )
    assert_trees_equal(general, vanilla)
    assert float(g_metrics["meta/ascent_norm"]) == 0.0 == float(metrics["meta/ascent_norm"])
    np.testing.assert_array_equal(metrics["meta/J"], g_metrics["meta/J"])


@pytest.mark.parametrize("order", ["first", "second"])
def test_param_fraction_mode_sets_the_ascent_by_its_size(order):
    """eta_mode='param_fraction': ‖θ' − θ‖ = η‖θ‖, measured by the step's own metric."""
    params, (pref, meta) = make_params(seed=5), make_batches(seed=5)
    theta_norm = float(np.linalg.norm(tree_flat(params)))
    for eta in (1e-3, 1e-2):
        _, m = metarm.meta_grads(
            jax_reward,
            params,
            pref,
            meta,
            eta=eta,
            order=order,
            eta_mode="param_fraction",
            center=0.0,
        )
        # float32 norms of a sum of ~1e3 squares: a few ulps of the result
        np.testing.assert_allclose(float(m["meta/ascent_norm"]), eta * theta_norm, rtol=1e-4)
        np.testing.assert_allclose(
            float(m["meta/eta_effective"]) * float(m["meta/grad_J_norm"]),
            eta * theta_norm,
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="eta_mode"):
        metarm.meta_grads(jax_reward, params, pref, meta, eta=0.1, eta_mode="relative", center=0.0)


def test_update_mode_sizes_the_ascent_against_the_last_optimizer_step():
    """eta_mode='update': ‖θ' − θ‖ = η·(the last update's norm), a traced value; none given is an
    error, and a zero norm (the first step) takes no ascent."""
    params, (pref, meta) = make_params(seed=7), make_batches(seed=7)
    for rho, u in ((0.25, 0.3), (4.0, 0.05)):
        _, m = metarm.meta_grads(
            jax_reward, params, pref, meta, eta=rho, eta_mode="update",
            prev_update_norm=jnp.float32(u), center=0.0,
        )  # fmt: skip
        np.testing.assert_allclose(float(m["meta/ascent_norm"]), rho * u, rtol=1e-4)
    _, m = metarm.meta_grads(
        jax_reward,
        params,
        pref,
        meta,
        eta=1.0,
        eta_mode="update",
        prev_update_norm=jnp.zeros(()),
        center=0.0,
    )
    assert float(m["meta/ascent_norm"]) == 0.0
    with pytest.raises(ValueError, match="last update norm"):
        metarm.meta_grads(jax_reward, params, pref, meta, eta=1.0, eta_mode="update", center=0.0)


def test_absolute_mode_ascent_norm_is_eta_times_grad_j_norm():
    params, (pref, meta) = make_params(seed=6), make_batches(seed=6)
    _, m = metarm.meta_grads(jax_reward, params, pref, meta, eta=0.05, center=0.0)
    np.testing.assert_allclose(
        float(m["meta/ascent_norm"]), 0.05 * float(m["meta/grad_J_norm"]), rtol=1e-4
    )
    assert float(m["meta/eta_effective"]) == pytest.approx(0.05)


def test_no_pairs_in_meta_batch_is_exactly_vanilla():
    """J = 0 and ∇J = 0 when no prompt has two real samples, so θ' = θ and g = ∇L(θ)."""
    params, (pref, meta) = make_params(seed=4), make_batches(seed=4)
    meta = dict(meta, sample_mask=jnp.zeros((M, K), jnp.int32).at[:, 0].set(1))
    vanilla, _ = metarm.vanilla_grads(jax_reward, params, pref, center=0.0)
    got, metrics = metarm.meta_grads(jax_reward, params, pref, meta, eta=0.3, center=0.0)
    assert_trees_equal(got, vanilla)
    assert float(metrics["meta/J"]) == 0.0 and float(metrics["meta/grad_J_norm"]) == 0.0
    assert float(metrics["meta/cos_gradJ_grad"]) == 0.0


@pytest.mark.parametrize("order", ["first", "second"])
def test_padding_sample_content_is_ignored(order):
    params, (pref, meta) = make_params(seed=5), make_batches(seed=5)
    rng = np.random.default_rng(5)
    pad = ~np.asarray(meta["sample_mask"], bool)  # [M, K]
    new_ids, new_att = _right_padded(rng, (M, K, T))
    changed = dict(
        meta,
        input_ids=jnp.where(pad[..., None], new_ids, meta["input_ids"]),
        attention_mask=jnp.where(pad[..., None], new_att, meta["attention_mask"]),
    )
    assert not np.array_equal(changed["input_ids"], meta["input_ids"])
    a, ma = metarm.meta_grads(jax_reward, params, pref, meta, eta=0.5, order=order, center=0.0)
    b, mb = metarm.meta_grads(jax_reward, params, pref, changed, eta=0.5, order=order, center=0.0)
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)
    assert_trees_close(ma, mb, rtol=1e-6, atol=1e-7)
    # ... whereas changing a real sample does change the step.
    real = dict(meta, input_ids=meta["input_ids"].at[0, 0].set((meta["input_ids"][0, 0] + 1) % V))
    c, _ = metarm.meta_grads(jax_reward, params, pref, real, eta=0.5, order=order, center=0.0)
    assert np.abs(tree_flat(a) - tree_flat(c)).max() > 1e-4


@pytest.mark.parametrize("order", ["first", "second"])
def test_jit_matches_eager_with_traced_eta(order):
    params, (pref, meta) = make_params(seed=6), make_batches(seed=6)
    step = jax.jit(
        functools.partial(
            metarm.meta_grads, jax_reward, order=order, measure_j_prime=True, center=0.0
        )
    )
    for eta in (0.5, 5e-6):
        g_eager, m_eager = metarm.meta_grads(
            jax_reward, params, pref, meta, eta=eta, order=order, measure_j_prime=True, center=0.0
        )
        g_jit, m_jit = step(params, pref, meta, jnp.float32(eta))
        assert_trees_close(g_jit, g_eager, rtol=1e-5, atol=1e-7)
        assert_trees_close(m_jit, m_eager, rtol=1e-5, atol=1e-7)
    assert step._cache_size() == 1  # eta traced: one compile for both values


# ------------------------------------------------------------------------------ metrics, API, cost


def test_j_prime_and_linear_gain():
    params, (pref, meta) = make_params(seed=7), make_batches(seed=7)
    eta = 1e-3
    _, metrics = metarm.meta_grads(
        jax_reward, params, pref, meta, eta=eta, measure_j_prime=True, center=0.0
    )
    grad_j = jax.grad(lambda t: metarm.meta_loss(jax_reward, t, meta))(params)
    theta_prime = jax.tree.map(lambda p, g: p + eta * g, params, grad_j)
    np.testing.assert_allclose(
        metrics["meta/J_prime"], metarm.meta_loss(jax_reward, theta_prime, meta), rtol=1e-6
    )
    gain = metrics["meta/J_prime"] - metrics["meta/J"]
    assert gain > 0  # the ascent raised J
    np.testing.assert_allclose(gain, metrics["meta/J_gain_linear"], rtol=0.05)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
    _, default = metarm.meta_grads(jax_reward, params, pref, meta, eta=eta, center=0.0)
    assert "meta/J_prime" not in default


def test_one_reward_fn_call_per_batch():
    params, (pref, meta) = make_params(), make_batches()
    shapes = []

    def counting_reward(p, ids, mask):
        shapes.append(ids.shape)
        return jax_reward(p, ids, mask)

    metarm.vanilla_grads(counting_reward, params, pref, center=0.0)
    assert shapes == [(2 * N, T)]
    shapes.clear()
    metarm.meta_grads(counting_reward, params, pref, meta, eta=1e-3, center=0.0)
    assert sorted(shapes) == sorted([(M * K, T), (2 * N, T)])


def test_first_order_flops_are_the_batch_ratio():
    """Compiled FLOPs of a first-order meta step / vanilla step <= 1.1 × (2n + m·k) / 2n."""
    n, m, k, t = 8, 8, 5, 16
    ks = jax.random.split(jax.random.key(0), 3)
    params = {
        "emb": jax.random.normal(ks[0], (V, 32)),
        "w1": jax.random.normal(ks[1], (32, 64)) / 6,
        "w2": jax.random.normal(ks[2], (64,)),
    }

    def per_token_reward(p, ids, mask):  # matmul-dominated, like a transformer
        h = jnp.tanh(p["emb"][ids] @ p["w1"])
        mask = mask.astype(h.dtype)[..., None]
        return ((h * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)) @ p["w2"]

    rng = np.random.default_rng(0)
    ids, att = _right_padded(rng, (2, n, t))
    pref = {
        "chosen_ids": ids[0],
        "chosen_mask": att[0],
        "rejected_ids": ids[1],
        "rejected_mask": att[1],
    }
    mids, matt = _right_padded(rng, (m, k, t))
    meta = {"input_ids": mids, "attention_mask": matt, "sample_mask": jnp.ones((m, k))}

    def flops(fn, *args):
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    vanilla = flops(
        lambda p, b: metarm.vanilla_grads(per_token_reward, p, b, center=0.0), params, pref
    )
    meta_step = flops(
        lambda p, b, s, e: metarm.meta_grads(per_token_reward, p, b, s, e, center=0.0),
        params,
        pref,
        meta,
        5e-6,
    )
    assert meta_step / vanilla <= 1.1 * (2 * n + m * k) / (2 * n), meta_step / vanilla


def test_bf16_params_keep_their_dtype():
    params = make_params(seed=8, dtype=jnp.bfloat16)
    pref, meta = make_batches(seed=8)
    g, metrics = jax.jit(functools.partial(metarm.meta_grads, jax_reward, center=0.0))(
        params, pref, meta, 1e-2
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g))
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    assert metarm.ascend(params, g, 0.0)["w1"].dtype == jnp.bfloat16
    assert_trees_equal(metarm.ascend(params, g, 0.0), params)


def test_nnx_state_params_under_jit():
    """The stages' usage: params = the nnx.Param State, reward_fn merges inside jit."""
    from flax import nnx

    class TinyRM(nnx.Module):
        def __init__(self, rngs):
            self.emb = nnx.Embed(V, D, rngs=rngs)
            self.head = nnx.Linear(D, 1, rngs=rngs)

        def __call__(self, ids, mask):
            mask = mask.astype(jnp.float32)[..., None]
            pooled = (self.emb(ids) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
            return self.head(jnp.tanh(pooled))[:, 0]

    graphdef, params, rest = nnx.split(TinyRM(nnx.Rngs(0)), nnx.Param, ...)

    def reward_fn(p, ids, mask):
        return nnx.merge(graphdef, p, rest)(ids, mask)

    pref, meta = make_batches(seed=9)
    step = jax.jit(functools.partial(metarm.meta_grads, reward_fn, order="second", center=0.0))
    g, metrics = step(params, pref, meta, 0.1)
    assert isinstance(g, nnx.State)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    assert float(metrics["meta/grad_J_norm"]) > 0 and np.isfinite(float(metrics["grad_norm"]))


def test_errors_are_explicit():
    params, (pref, meta) = make_params(), make_batches()
    with pytest.raises(ValueError, match="config.meta.order"):
        metarm.meta_grads(jax_reward, params, pref, meta, eta=0.1, order="third", center=0.0)
    with pytest.raises(ValueError, match="same T"):
        short = dict(pref, rejected_ids=pref["rejected_ids"][:, 1:])
        metarm.vanilla_grads(jax_reward, params, short, center=0.0)
    with pytest.raises(ValueError, match=r"\[m, k, T\]"):
        metarm.meta_grads(
            jax_reward,
            params,
            pref,
            dict(meta, input_ids=meta["input_ids"][0]),
            eta=0.1,
            center=0.0,
        )
    with pytest.raises(ValueError, match="one scalar per sequence"):
        metarm.vanilla_grads(lambda p, i, m: jax_reward(p, i, m)[:, None], params, pref, center=0.0)
