"""The optimizer and learning-rate schedules of every training stage, from `config.train`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from metarm_jax.core.tree import global_norm
from metarm_jax.runtime.errors import ConfigError


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` >= 1 is a step count; 0 <= warmup < 1 a fraction of the run (paper: 0.3 epoch)."""
    return int(warmup) if warmup >= 1 else round(warmup * total_steps)


def schedule(
    name: str, lr: float, total_steps: int, warmup: float = 0.0, end_lr_factor: float = 0.0
) -> optax.Schedule:
    """lr(count), count = optimizer updates done so far (0 for the first step).

    Linear warm-up 0 -> lr over W steps, then constant, linear or cosine decay to
    lr * end_lr_factor at count = total_steps. ``name``: one of ``config_rules.SCHEDULES``, as
    every ``*.schedule`` key (``config_lib.validate`` checks them).
    """
    if total_steps < 1:
        raise ConfigError(f"the run has {total_steps} steps; set train.steps or train.epochs > 0.")
    w = min(warmup_steps(warmup, total_steps), total_steps)
    end = lr * end_lr_factor
    after = {
        "constant": lambda: optax.constant_schedule(lr),
        "linear": lambda: optax.linear_schedule(lr, end, max(total_steps - w, 1)),
        "cosine": lambda: optax.cosine_decay_schedule(
            lr, max(total_steps - w, 1), alpha=end_lr_factor
        ),
    }[name]()
    if w == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, w), after], [w])


def _decay_mask(params):
    """Weight decay on matrices only: not on norms (1-D per layer) nor the size-1 score bias."""

    def keep(path, x):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        return "norm" not in name and "bias" not in name

    return jax.tree_util.tree_map_with_path(keep, params)


def optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip -> AdamW) with the configured schedule; `cfg` is `config.train` (its optimizer one
    of ``config_rules.OPTIMIZERS``: ``config_lib.validate`` checks it)."""
    lr = schedule(cfg.schedule, cfg.lr, total_steps, cfg.warmup, cfg.end_lr_factor)
    opt = {
        "adamw": lambda: optax.adamw(
            lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask
        ),
        "adam": lambda: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        "sgd": lambda: optax.sgd(lr),
    }[cfg.optimizer]()
    if cfg.clip_norm and cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt, lr


# --------------------------------------------------------------------------------------------
# Optimizers over parameter groups (PPO's actor and critic).
# --------------------------------------------------------------------------------------------


def skip_zero_updates(opt: optax.GradientTransformation) -> optax.GradientTransformation:
    """``opt``, except that an all-zero gradient leaves params AND optimizer state unchanged
    (a gated actor step must not move Adam's moments or its step count)."""

    def update(grads, state, params=None):
        updates, new_state = opt.update(grads, state, params)
        live = global_norm(grads) > 0
        updates = jax.tree.map(lambda u: jnp.where(live, u, jnp.zeros_like(u)), updates)
        new_state = jax.tree.map(lambda a, b: jnp.where(live, a, b), new_state, state)
        return updates, new_state

    return optax.GradientTransformation(opt.init, update)


def two_optimizers(
    actor: optax.GradientTransformation, critic: optax.GradientTransformation
) -> optax.GradientTransformation:
    """params {"actor", "critic"} -> each part updated by its own optimizer (own lr, own clip)."""
    parts = {"actor": skip_zero_updates(actor), "critic": critic}

    def init(params):
        return {k: parts[k].init(params[k]) for k in parts}

    def update(grads, state, params=None):
        out = {
            k: parts[k].update(grads[k], state[k], None if params is None else params[k])
            for k in parts
        }
        return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}

    return optax.GradientTransformation(init, update)


def block_optimizer(block, train, lr: float, total_steps: int) -> optax.GradientTransformation:
    """Adam at ``lr`` with a stage block's own schedule, warm-up and clipping (``config.ppo``:
    ``schedule``, ``warmup``, ``clip_norm``) and the loop's betas and eps (``config.train``)."""
    cfg = ml_collections.ConfigDict(
        dict(
            optimizer="adam",
            lr=lr,
            schedule=block.schedule,
            warmup=block.warmup,
            end_lr_factor=0.0,
            b1=train.b1,
            b2=train.b2,
            eps=train.eps,
            weight_decay=0.0,
            clip_norm=block.clip_norm,
        )
    )
    return optimizer(cfg, total_steps)[0]
