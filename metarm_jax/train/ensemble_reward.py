"""PPO's reward from an ensemble of M reward models (``config.ppo.reward_models``; Coste et al.
2024): each member scores every roll-out, the scores are put on one scale by each member's
validation mean and std (read from its export's scoring convention) and aggregated by
``core.ensemble.aggregate``. docs/ppo.md, "RM ensembles".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metarm_jax.core import ensemble
from metarm_jax.models import hf
from metarm_jax.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """PPO's reward from M reward models (``ppo.reward_models``): each member scores every
    roll-out, the scores are standardised per member (``mean``/``std`` [M], None: as they are)
    and aggregated (``core.ensemble.aggregate``: ``agg``, λ = ``lam``)."""

    agg: str
    lam: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, members: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[M, N] raw scores -> (reward [N], the members' scores on the scale aggregated [M, N])."""
        if self.mean is not None:
            members = ensemble.standardize(members, jnp.asarray(self.mean), jnp.asarray(self.std))
        return ensemble.aggregate(members, self.agg, self.lam), members


def member_scale(path: str, i: int) -> tuple[float, float]:
    """(mean, std) of an RM's scores on its validation pairs, from its export's scoring convention
    (the rm/metarm stage writes them into config.json: ``validation_reward_mean``/``_std``)."""
    scoring = hf.read_config(path).get(hf.SCORING_KEY) or {}
    mean, std = scoring.get("validation_reward_mean"), scoring.get("validation_reward_std")
    if mean is None or std is None or not std > 0:
        raise ConfigError(
            f"config.ppo.reward_models[{i}]={path!r}: its config.json has no validation reward "
            f"mean and positive std ({hf.SCORING_KEY}.validation_reward_mean/_std, written by the "
            "rm and metarm stages) to put the members on one scale; set "
            "ppo.ensemble_standardize=False to aggregate the raw scores."
        )
    return float(mean), float(std)


def ensemble_from(paths, agg: str, lam: float, standardize: bool) -> Ensemble:
    """The ensemble of the RM exports ``paths`` (standardised by their validation scores)."""
    mean = std = None
    if standardize:
        mean, std = zip(*(member_scale(path, i) for i, path in enumerate(paths)))
    return Ensemble(agg, float(lam), mean, std)


def ensemble_of(p) -> Ensemble | None:
    """The ensemble ``config.ppo`` asks for (``reward_models``), or None (one RM)."""
    paths = tuple(p.reward_models)
    if not paths:
        return None
    return ensemble_from(paths, p.ensemble_agg, p.ensemble_lambda, p.ensemble_standardize)
