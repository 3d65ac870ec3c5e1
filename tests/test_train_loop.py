"""The generic train loop: accumulation, schedules, the NaN guard, metrics sinks."""

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarm_jax import models, sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.models import llama
from metarm_jax.runtime import faults, hosts
from metarm_jax.runtime.errors import Preempted
from metarm_jax.train import loop, optim, rm
from tests import marker_task
from tests.tolerances import assert_close_to_scale


def _tiny_rm():
    model = llama.create(llama.preset("tiny"), "reward", seed=0)
    reward_fn, params, *_ = models.split(model)
    return reward_fn, params


def test_accumulated_grads_equal_full_batch():
    reward_fn, params = _tiny_rm()
    pref = marker_task.preference_arrays(16, 14, seed=0)
    batch = {"pref": {k: jnp.asarray(v) for k, v in pref.items()}}
    step_fn = rm.rm_step(reward_fn, 0.0)
    rng = jax.random.key(0)
    full, m_full = jax.jit(lambda p, b: loop.accumulate(step_fn, p, b, rng, 1))(params, batch)
    acc, m_acc = jax.jit(lambda p, b: loop.accumulate(step_fn, p, b, rng, 4))(params, batch)
    # The scan adds 4 micro-batch means where the full batch takes one mean: the same terms in
    # another order. The float32 error then scales with each leaf's magnitude, not with each
    # element's (measured: at most 2.3e-6 of the leaf's max |g| here, and an element 5e-5 off
    # relative to itself on an AVX2-only EPYC), so the bound is 2e-5 of the leaf's scale.
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(acc)):
        assert_close_to_scale(b, a, rtol=2e-5)
    np.testing.assert_allclose(float(m_full["loss"]), float(m_acc["loss"]), rtol=1e-6)
    # The micro-batches partition the batch: every row exactly once.
    rows = loop.split_micro(jnp.arange(16), 4)
    assert sorted(np.asarray(rows).ravel().tolist()) == list(range(16))


def test_schedules_against_hand_computed_values():
    lr, total = 1e-3, 10
    lin = optim.schedule("linear", lr, total, warmup=0.3)  # 0.3 of the run = 3 warm-up steps
    expect = [0, lr / 3, 2 * lr / 3, lr] + [lr * (1 - t / 7) for t in range(1, 7)] + [0.0]
    np.testing.assert_allclose([float(lin(i)) for i in range(11)], expect, rtol=1e-5, atol=1e-12)
    cos = optim.schedule("cosine", lr, total, warmup=2, end_lr_factor=0.1)
    want = [0, lr / 2] + [
        lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 8))) for t in range(9)
    ]
    np.testing.assert_allclose([float(cos(i)) for i in range(11)], want, rtol=1e-5)
    const = optim.schedule("constant", lr, total)
    assert float(const(0)) == pytest.approx(lr) and float(const(9)) == pytest.approx(lr)


# ---------------------------------------------------------------- a toy regression for the loop


class _Linear(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.zeros((4, 1)), axes=("embed", "head_out"))


def _toy(poison_at=(), n=64, batch=8, seed=0):
    """Least squares on x @ w; rows of batches listed in ``poison_at`` get a NaN target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n * 4, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32))[:, 0]
    for b in poison_at:
        y[b * batch : (b + 1) * batch] = np.nan
    data = {"x": x, "y": y}
    it = marker_task.batches(data, batch, shuffle=False, repeat=False)
    _, params = nnx.split(_Linear(), nnx.Param)

    def step_fn(p, b, rng):
        def loss(p):
            err = (b["toy"]["x"] @ p["w"][...])[:, 0] - b["toy"]["y"]
            return jnp.mean(err**2)

        l, g = jax.value_and_grad(loss)(p)
        return g, {"loss": l}

    return params, step_fn, {"toy": it}


def _cfg(**kw):
    c = config_lib.base_config().train
    c.update(
        dict(
            lr=0.05,
            schedule="constant",
            clip_norm=0.0,
            save_every=2,
            keep=10,
            eval_every=0,
            progress=False,
            nan_patience=3,
            async_checkpoints=False,
        )
    )
    c.update(kw)
    return c


def _run(tmp_path, steps, poison_at=(), boundary=1, **kw):
    cfg = _cfg(**kw)
    params, step_fn, batches = _toy(poison_at)
    opt, sched = optim.optimizer(cfg, steps)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    return loop.train(
        cfg,
        mesh=mesh,
        workdir=str(tmp_path),
        params=params,
        step_fn=step_fn,
        seed=0,
        batches=batches,
        total_steps=steps,
        optimizer=opt,
        schedule=sched,
        eval_fn=lambda p: {"w_norm": float(jnp.linalg.norm(p["w"][...]))},
        boundary=boundary,
    )


def test_nan_step_is_skipped_and_counted(tmp_path):
    cfg = _cfg()
    params, step_fn, batches = _toy(poison_at=(0,))
    opt, sched = optim.optimizer(cfg, 4)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    shard = loop.state_shardings(mesh, params, opt)
    state = loop.init_state(params, opt, 0, shard)
    w0 = np.asarray(state["params"]["w"][...])
    b = next(batches["toy"])
    step = jax.jit(loop.make_train_step(step_fn, opt, sched))
    state, m = step(state, {"toy": b})
    assert int(m["skipped"]) == 1 and int(state["nonfinite"]) == 1 and int(state["streak"]) == 1
    np.testing.assert_array_equal(np.asarray(state["params"]["w"][...]), w0)  # untouched
    state, m = step(state, {"toy": next(batches["toy"])})
    assert int(m["skipped"]) == 0 and int(state["streak"]) == 0 and int(state["nonfinite"]) == 1
    assert not np.array_equal(np.asarray(state["params"]["w"][...]), w0)


def test_nan_streak_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    # batch 4 is bad once (skipped, run goes on); batches 6,7,8 (steps 7-9) are bad in a row.
    with pytest.raises(loop.TrainingDiverged, match=r"3 steps in a row.*last good checkpoint"):
        _run(tmp_path, 20, poison_at=(4, 6, 7, 8))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows if "loss" in r}
    assert by_step[5]["skipped"] == 1 and by_step[6]["skipped"] == 0
    assert by_step[9]["streak"] == 3 and by_step[9]["nonfinite"] == 4
    assert os.listdir(tmp_path / "tb")  # TensorBoard events written
    from metarm_jax.runtime.checkpoint import Checkpointer, abstract_like

    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=10, async_save=False)
    assert ck.latest_step() == 8  # nothing saved after the stop
    params, _, _ = _toy()
    opt, _ = optim.optimizer(_cfg(), 20)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    template = loop.init_state(params, opt, 0, loop.state_shardings(mesh, params, opt))
    s8 = ck.restore_step(8, abstract_like(template))
    s6 = ck.restore_step(6, abstract_like(template))
    w8 = np.asarray(s8["params"]["w"][...])
    assert np.all(np.isfinite(w8))
    np.testing.assert_array_equal(w8, np.asarray(s6["params"]["w"][...]))  # steps 7, 8 skipped
    ck.close()


def test_loop_learns_and_logs(tmp_path):
    params, summary = _run(tmp_path, 30, lr=0.2)
    w = np.asarray(params["w"][...])[:, 0]
    assert np.linalg.norm(w - [1.0, -2.0, 0.5, 3.0]) < 1.0  # moved most of the way from 0
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))
    assert rows[0]["lr"] == pytest.approx(0.2)
    assert any("eval/w_norm" in r for r in rows)
    assert summary["skipped"] == 0 and summary["steps"] == 30


def test_a_checkpoint_commits_only_after_its_steps_rows_are_written(tmp_path, monkeypatch):
    """When the checkpoint of step s is saved, metrics.jsonl already holds the rows of every step
    up to s, its eval row included: a kill right after the commit loses no row that the resumed
    run (starting after s) would not write again. (bench/soak.py found the row of step s lost:
    it was drained one step late, after the checkpoint.)"""
    from metarm_jax.runtime import checkpoint

    seen = {}
    real_save = checkpoint.Checkpointer.save

    def save(self, step, *a, **kw):
        path = tmp_path / "metrics.jsonl"
        rows = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        seen[step] = (
            {r["step"] for r in rows if "loss" in r},
            {r["step"] for r in rows if "eval/w_norm" in r},
        )
        return real_save(self, step, *a, **kw)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    _run(tmp_path, 8, eval_every=4)
    assert sorted(seen) == [2, 4, 6, 8]
    for step, (trained, evaluated) in seen.items():
        assert trained == set(range(1, step + 1)), step
        assert evaluated == {s for s in (4, 8) if s <= step}, step


def test_a_step_that_asks_gets_the_last_applied_update_norm():
    """MetaRM's eta_mode='update' reads the optimizer's last update norm: the loop keeps it in
    its state and passes it to the step function when asked (``update_norm_arg``); a skipped
    (non-finite) step leaves it as it was."""
    cfg = _cfg()
    params, inner, batches = _toy(poison_at=(2,))

    def step_fn(p, b, rng, prev_update_norm=None):
        g, m = inner(p, b, rng)
        return g, {**m, "seen": prev_update_norm}

    opt, sched = optim.optimizer(cfg, 4)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state = loop.init_state(params, opt, 0, loop.state_shardings(mesh, params, opt))
    step = jax.jit(loop.make_train_step(step_fn, opt, sched, update_norm_arg=True))
    seen, applied = [], []
    for _ in range(4):
        state, m = step(state, {"toy": next(batches["toy"])})
        seen.append(float(m["seen"]))
        applied.append(float(m["update_norm"]))
    assert seen[0] == 0.0 and applied[0] > 0  # no update before the first step
    assert seen[1] == applied[0] and seen[2] == applied[1]
    assert applied[2] == 0.0 and seen[3] == applied[1]  # step 2 was skipped: the norm is kept


def _rows(path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(l).items() if k != "time"}
        for l in (path / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize("boundary,saved_at", [(1, 5), (3, 6)])
def test_sigterm_saves_at_the_next_boundary_and_resume_ends_where_a_straight_run_ends(
    tmp_path, monkeypatch, boundary, saved_at
):
    """A real SIGTERM to this process during step 5 of 12 (checkpoints every 4), caught by the
    handler ``hosts.watch_preemption`` installs alone: the loop saves after the step (after
    step 6 when checkpoints may only fall on multiples of 3 steps, as PPO's iterations) and
    raises Preempted; run again, it resumes there and ends with the params and metrics rows of
    an uninterrupted run, bit for bit."""
    monkeypatch.setitem(hosts._preempt, "service", False)
    monkeypatch.setitem(hosts._preempt, "received", False)
    monkeypatch.setattr(faults, "_counts", {})
    monkeypatch.setenv("METARM_FAULT", "term:train_step:5")
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert hosts.watch_preemption() == "signal"
        with pytest.raises(Preempted, match=rf"after step {saved_at} of 12 .*SIGTERM.*/{saved_at}"):
            _run(tmp_path / "cut", 12, boundary=boundary, save_every=4)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert sorted(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        4,
        saved_at,
    ]
    monkeypatch.delenv("METARM_FAULT")
    hosts._preempt["received"] = False
    resumed, summary = _run(tmp_path / "cut", 12, boundary=boundary, save_every=4)
    assert summary["resumed_from"] == saved_at
    straight, _ = _run(tmp_path / "straight", 12, boundary=boundary, save_every=4)
    np.testing.assert_array_equal(np.asarray(resumed["w"][...]), np.asarray(straight["w"][...]))
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "straight")
