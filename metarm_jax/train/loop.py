"""The ONE generic train loop: RM, MetaRM, SFT, DPO and PPO differ only in what they pass in.

A stage supplies
    step_fn(params, batch, rng) -> (grads, metrics)   pure, jit-able; metrics["loss"] is a scalar
    batches: {name: iterator}                          grain iterators of numpy pytrees; each step
                                                       draws one global batch from every iterator
                                                       and passes {name: batch} to step_fn
    eval_fn(params) -> {name: value}                   optional, run every train.eval_every steps
A batch source may instead be a :class:`StateSource`, whose batches depend on the current params
(PPO's on-policy roll-outs): the loop asks it ``next_batch(params, step)``, logs what its
``pop_metrics()`` returns in the step's row, and checkpoints its ``get_state()`` with the data.
and gets: a jitted, sharded step (params and optimizer state placed by the one sharding table,
batches split over the data axes, the train state donated), gradient accumulation over
micro-batches (lax.scan inside the step), the optax optimizer with its schedule and clipping, a
NaN/Inf guard, metrics to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tb``), a tqdm bar,
and orbax checkpoints with exact resume (``workdir/checkpoints``). On a preemption notice
(SIGTERM; ``hosts.preemption_point``) every process saves a checkpoint after the same step and
the loop raises ``Preempted``.

Train state (a dict pytree, all jax.Arrays; this is what a checkpoint holds besides the data):
    params      nnx.State of nnx.Param        opt_state   optax state
    step        int32 [] steps run            rng         uint32 [2] base key data (per-step key:
    nonfinite   int32 [] skipped steps, total               fold_in(rng, step))
    streak      int32 [] skipped steps in a row
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from metarm_jax import sharding as shd
from metarm_jax.core.tree import global_norm
from metarm_jax.runtime import faults, hosts
from metarm_jax.runtime.checkpoint import Checkpointer, abstract_like
from metarm_jax.runtime.errors import ConfigError, Preempted, UserError

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, dict[str, jax.Array]]]
EvalFn = Callable[[PyTree], Mapping[str, Any]]


class TrainingDiverged(UserError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


class StateSource:
    """A batch source computed from the train state: on-policy roll-outs (PPO).

    ``next_batch(params, step)`` returns the global batch of ``step`` (host numpy, or global
    jax.Arrays already laid out by :func:`metarm_jax.sharding.batch_sharding`), given the params
    the step is about to update. ``pop_metrics()`` returns metrics to log in that step's row
    (e.g. roll-out statistics; {} when there are none). ``get_state() -> bytes`` and
    ``set_state(bytes)`` are its checkpointed position (saved with the data iterators through
    grain's orbax handler, which also calls ``start_prefetch()`` after a restore).
    """

    def next_batch(self, params: PyTree, step: int) -> PyTree:
        raise NotImplementedError

    def pop_metrics(self) -> Mapping[str, Any]:
        return {}

    def get_state(self) -> bytes:
        raise NotImplementedError

    def set_state(self, state: bytes) -> None:
        raise NotImplementedError

    def start_prefetch(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Pieces of the jitted step (pure; tested on their own).
# --------------------------------------------------------------------------------------------


def split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """[B, ...] -> [A, B/A, ...]; micro-batch i holds rows i, i+A, i+2A, ...

    Strided rather than contiguous so that each micro-batch keeps the batch's data-parallel
    layout (row blocks stay on their devices): no communication to split.
    """
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)


def accumulate(
    step_fn: StepFn, params: PyTree, batch: PyTree, rng: jax.Array, num_micro: int
) -> tuple[PyTree, dict[str, jax.Array]]:
    """Mean of step_fn's grads and metrics over ``num_micro`` micro-batches (lax.scan).

    Equal to the full-batch grads for any loss that is a mean over the batch's rows (the
    preference, SFT and DPO losses). For MetaRM each micro-batch takes its own ascent step
    θ' = θ + η∇J(micro meta batch), i.e. accumulation averages per-micro-batch meta gradients.
    """
    if num_micro == 1:
        return step_fn(params, batch, rng)
    micro = jax.tree.map(lambda x: split_micro(x, num_micro), batch)
    grads0 = jax.tree.map(jnp.zeros_like, params)
    metrics_shape = jax.eval_shape(
        lambda: step_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1]
    )
    metrics0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metrics_shape)

    def body(carry, xs):
        g_sum, m_sum = carry
        i, mb = xs
        g, m = step_fn(params, mb, jax.random.fold_in(rng, i))
        g_sum = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_sum, g)
        m_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), m_sum, m)
        return (g_sum, m_sum), None

    (g_sum, m_sum), _ = jax.lax.scan(body, (grads0, metrics0), (jnp.arange(num_micro), micro))
    return (
        jax.tree.map(lambda g: g / num_micro, g_sum),
        jax.tree.map(lambda m: m / num_micro, m_sum),
    )


def all_finite(*trees: PyTree) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def init_state(
    params: PyTree, optimizer: optax.GradientTransformation, seed: int, shardings: PyTree
) -> dict[str, Any]:
    """The train state at step 0, laid out on ``shardings`` (see :func:`state_shardings`)."""

    def make(params):
        return {
            "params": params,
            "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed)),
            "nonfinite": jnp.zeros((), jnp.int32),
            "streak": jnp.zeros((), jnp.int32),
            "update_norm": jnp.zeros((), jnp.float32),  # ‖the last applied update‖
        }

    return jax.jit(make, out_shardings=shardings)(params)


def state_shardings(mesh: Mesh, params: PyTree, optimizer: optax.GradientTransformation) -> PyTree:
    """Shardings of the train state, from the one sharding table.

    Params carry their logical axes; optax keeps the nnx.Variable nodes (and so the axes) in its
    moment trees, so Adam's mu/nu are placed exactly like their params; scalars are replicated.
    """

    def place(x):
        if isinstance(x, nnx.Variable):
            return shd.state_shardings(mesh, x)
        return shd.replicated(mesh)

    opt_shape = jax.eval_shape(optimizer.init, params)
    rep = shd.replicated(mesh)
    return {
        "params": shd.state_shardings(mesh, params),
        "opt_state": jax.tree.map(place, opt_shape, is_leaf=lambda x: isinstance(x, nnx.Variable)),
        "step": rep,
        "rng": rep,
        "nonfinite": rep,
        "streak": rep,
        "update_norm": rep,
    }


def make_train_step(
    step_fn: StepFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule | None,
    num_micro: int = 1,
    *,
    update_norm_arg: bool = False,
):
    """The (un-jitted) train step: state, batch -> state, metrics.

    ``update_norm_arg``: call ``step_fn(params, batch, rng, prev_update_norm=‖Δθ_opt‖)`` with the
    norm of the last optimizer update applied (0 before the first; kept across a skipped step):
    MetaRM's ascent sized against the optimizer's step (``meta.eta_mode='update'``).

    A step whose loss or gradients are not all finite leaves params and optimizer state as they
    were and counts itself. The decision stays on device: one ``lax.cond`` between applying the
    update and keeping the state (an elementwise select over params and optimizer state would
    hold both versions at once: 2.3x the fp32 weights of temporaries at 7B, docs/scaling.md).
    """

    def apply(state, grads):
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return params, opt_state, global_norm(updates)

    def keep(state, grads):
        del grads
        return state["params"], state["opt_state"], jnp.zeros((), jnp.float32)

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        fn = step_fn
        if update_norm_arg:
            fn = functools.partial(step_fn, prev_update_norm=state["update_norm"])
        grads, metrics = accumulate(fn, state["params"], batch, rng, num_micro)
        finite = all_finite(metrics["loss"], grads)
        params, opt_state, update_norm = jax.lax.cond(finite, apply, keep, state, grads)
        skipped = (~finite).astype(jnp.int32)
        new = {
            "params": params,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
            "nonfinite": state["nonfinite"] + skipped,
            "streak": jnp.where(finite, 0, state["streak"] + 1),
            "update_norm": jnp.where(finite, update_norm, state["update_norm"]),
        }
        metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
        metrics.update(skipped=skipped, nonfinite=new["nonfinite"], streak=new["streak"])
        metrics["update_norm"] = update_norm  # ‖the optimizer step applied‖ (0 when skipped)
        if "meta/ascent_norm" in metrics:  # MetaRM: the ascent's size next to the update's
            u = metrics["update_norm"]
            metrics["meta/ascent_to_update"] = jnp.where(
                u > 0, metrics["meta/ascent_norm"] / jnp.where(u > 0, u, 1.0), 0.0
            )
        if schedule is not None:
            # the lr this update used: the optimizer counts applied (not skipped) updates
            metrics["lr"] = jnp.asarray(schedule(state["step"] - state["nonfinite"]), jnp.float32)
        return new, metrics

    return train_step


def jit_train_step(train_step, mesh: Mesh, shardings: PyTree, batch_example: PyTree):
    """jax.jit with the state placed by ``shardings`` (donated) and batches split over data axes."""
    batch_sh = jax.tree.map(lambda x: shd.batch_sharding(mesh, np.ndim(x)), batch_example)
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=0,
    )


# --------------------------------------------------------------------------------------------
# Metrics sinks (process 0 only).
# --------------------------------------------------------------------------------------------


def _to_host(v):
    a = np.asarray(jax.device_get(v))
    return float(a) if a.ndim == 0 else a


class MetricsWriter:
    """One row per logged step to ``metrics.jsonl`` and TensorBoard; arrays become histograms."""

    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):  # drop rows a resumed run is about to write again
            with open(self.path) as f:
                rows = [
                    line
                    for line in f
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step
                ]
            with open(self.path, "w") as f:
                f.writelines(rows)
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        for k, v in metrics.items():
            v = _to_host(v)
            if isinstance(v, float):
                row[prefix + k] = v
                self.tb.add_scalar(prefix + k, v, step)
            else:
                row[prefix + k] = v.tolist()
                if v.size:
                    self.tb.add_histogram(prefix + k, v, step)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------


def _check_batch_sizes(mesh: Mesh, batch: PyTree, num_micro: int) -> None:
    dp = shd.dp_size(mesh)
    for path, x in jax.tree_util.tree_leaves_with_path(batch):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        b = np.shape(x)[0] * (1 if isinstance(x, jax.Array) else jax.process_count())
        if b % num_micro or (b // num_micro) % dp:
            raise ConfigError(
                f"batch {name!r}: global size {b} must split into train.grad_accum={num_micro} "
                f"micro-batches whose size is divisible by the {dp} data-parallel devices "
                f"(mesh {dict(mesh.shape)}); choose a batch size that is a multiple of {num_micro * dp}."
            )


def train(
    cfg,
    *,
    mesh: Mesh,
    workdir: str,
    params: PyTree,
    step_fn: StepFn,
    seed: int,
    batches: Mapping[str, Iterator],
    total_steps: int,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
    eval_fn: EvalFn | None = None,
    desc: str = "train",
    snapshot_every: int = 0,
    snapshot_fn: Callable[[int, PyTree], None] | None = None,
    boundary: int = 1,
    update_norm_arg: bool = False,
) -> tuple[PyTree, dict[str, Any]]:
    """Run ``total_steps`` optimizer steps (resuming from ``workdir/checkpoints``); returns the
    final params and a summary. ``cfg`` is ``config.train`` (grad_accum, eval_every, log_every,
    save_every, keep, async_checkpoints, nan_patience, progress); ``seed`` seeds the step rng.
    ``snapshot_fn(step, params)`` runs after every ``snapshot_every``-th step (a stage's export of
    an intermediate model; a resumed run writes the same snapshots again). ``boundary``: the
    steps a run may stop and resume after are its multiples (PPO: one iteration, whose roll-out
    buffer is not saved); on a preemption notice the loop saves after the next such step and
    raises ``Preempted``."""
    os.makedirs(workdir, exist_ok=True)
    num_micro = int(cfg.grad_accum)  # >= 1 (config_lib.validate)
    shardings = state_shardings(mesh, params, optimizer)
    state = init_state(params, optimizer, seed, shardings)
    del params

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=cfg.keep, async_save=cfg.async_checkpoints
    )
    restored = ckpt.restore_latest(abstract_like(state), batches)
    start = 0
    if restored is not None:
        state, start = restored
        if jax.process_index() == 0:
            print(
                f"[metarm_jax] resuming {desc} from {ckpt.step_dir(start)} (step {start}/{total_steps}).",
                flush=True,
            )
    writer = MetricsWriter(workdir, resume_step=start)
    resumed_on_snapshot = restored is not None and snapshot_every and start % snapshot_every == 0
    if snapshot_fn is not None and resumed_on_snapshot:  # killed between checkpoint and snapshot
        snapshot_fn(start, state["params"])

    def evaluate(step):
        if eval_fn is None:
            return {}
        results = dict(eval_fn(state["params"]))
        writer.write(step, results, prefix="eval/")
        return results

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start,
        desc=desc,
        dynamic_ncols=True,
        disable=not (cfg.progress and jax.process_index() == 0),
    )
    step_jit = None
    last_metrics: dict[str, float] = {}
    eval_results: dict[str, Any] = {}
    pending = None  # (step, device metrics) of the step before, read while the next one runs

    def drain(pending):
        step, metrics, extra = pending
        host = {k: _to_host(v) for k, v in metrics.items()}
        if extra or (cfg.log_every and (step % cfg.log_every == 0 or step == total_steps)):
            writer.write(
                step, {**host, **extra}
            )  # a source's metrics (roll-outs) are always logged
        bar.set_postfix(loss=f"{host['loss']:.4f}", skipped=int(host["nonfinite"]), refresh=False)
        if host["streak"] >= cfg.nan_patience:
            ckpt.wait()
            last = ckpt.latest_step()
            where = (
                f"the last good checkpoint is {ckpt.step_dir(last)} (step {last})"
                if last is not None
                else "no checkpoint was saved yet"
            )
            what = "loss" if not math.isfinite(host["loss"]) else "gradient (the loss was finite)"
            raise TrainingDiverged(
                f"{desc}: stopped at step {step}: {int(host['streak'])} steps in a row had a non-finite "
                f"{what} (each was skipped; {int(host['nonfinite'])} in all, limit "
                f"train.nan_patience={cfg.nan_patience}); {where}. Lower train.lr or "
                f"train.clip_norm, or check the data."
            )
        return host

    try:
        for step in range(start, total_steps):
            host_batch = {
                name: (
                    it.next_batch(state["params"], step)
                    if isinstance(it, StateSource)
                    else next(it)
                )
                for name, it in batches.items()
            }
            extra = {
                k: v
                for it in batches.values()
                if isinstance(it, StateSource)
                for k, v in it.pop_metrics().items()
            }
            if step_jit is None:
                _check_batch_sizes(mesh, host_batch, num_micro)
                step_jit = jit_train_step(
                    make_train_step(
                        step_fn, optimizer, schedule, num_micro, update_norm_arg=update_norm_arg
                    ),
                    mesh,
                    shardings,
                    host_batch,
                )
            state, metrics = step_jit(state, shd.global_batch(mesh, host_batch))
            if pending is not None:
                last_metrics = drain(pending)
            pending = (step + 1, metrics, extra)
            bar.update(1)
            done = step + 1
            faults.point("train_step")
            # The last step is no stop: the stage ends (and exports) right after it.
            preempted = done % boundary == 0 and done < total_steps and hosts.preemption_point()
            saving = (
                bool(cfg.save_every and done % cfg.save_every == 0)
                or done == total_steps
                or preempted
            )
            # Everything a step writes (its metrics row, eval row, snapshot) is written before its
            # checkpoint can commit: a kill after the commit then loses nothing the resumed run
            # would not write again (found by bench/soak.py: a row drained one step late was lost).
            if saving:
                last_metrics, pending = drain(pending), None
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == total_steps:
                eval_results = evaluate(done)
            if snapshot_fn is not None and snapshot_every and done % snapshot_every == 0:
                snapshot_fn(done, state["params"])  # on every process (exports are collective)
            if saving:
                ckpt.save(done, state, batches)
            if preempted:
                ckpt.wait()
                raise Preempted(
                    f"{desc} stopped after step {done} of {total_steps} on a preemption notice "
                    f"(SIGTERM); its checkpoint {ckpt.step_dir(done)} is saved. Run the same "
                    "command again to resume from it."
                )
        if pending is not None:
            last_metrics = drain(pending)
        if start >= total_steps and eval_fn is not None:
            eval_results = evaluate(start)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    summary = {
        "steps": total_steps,
        "resumed_from": start,
        "skipped": int(jax.device_get(state["nonfinite"])),
        **{f"train/{k}": v for k, v in last_metrics.items() if isinstance(v, float)},
        **{f"eval/{k}": v for k, v in eval_results.items() if np.ndim(v) == 0},
    }
    return state["params"], summary
