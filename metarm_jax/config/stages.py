"""The pipeline stages that ``python -m metarm_jax.main`` runs, in ``config.pipeline`` order.

Stages are registered by name as ``"module:function"`` so that importing this file stays cheap
(and so that this registry, which every stage module may import, imports none of them); each
stage is ``fn(ctx: StageContext) -> dict`` (a summary of what it did, logged by main).

A stage may also register checks of its own in ``VALIDATORS`` (``"module:function"`` strings,
each ``fn(config) -> None`` raising ``ConfigError``): ``config_lib.validate`` runs those of every
stage in ``config.pipeline``, on the unresolved config, before any stage runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import ml_collections
from jax.sharding import Mesh

from metarm_jax.config import defaults
from metarm_jax.runtime.errors import ConfigError

STAGES: dict[str, str] = {
    "inspect": "metarm_jax.inspect_stage:run",
    "rm": "metarm_jax.train.rm:run_rm",
    "metarm": "metarm_jax.train.rm:run_metarm",
    "build_meta": "metarm_jax.generation.build_meta:run",
    "sft": "metarm_jax.train.sft:run_sft",
    "dpo": "metarm_jax.train.dpo:run_dpo",
    "ppo": "metarm_jax.train.ppo:run_ppo",
    "rlhf": "metarm_jax.rlhf:run",
    "rm_eval": "metarm_jax.eval.rm_eval:run",
    "warm": "metarm_jax.train.rm:run_warm",
}

# A stage's own checks beyond the values of its keys (config_lib.validate checks every enum and
# range): what it needs from the rest of the config, e.g. ppo needs ppo.rm_path.
VALIDATORS: dict[str, tuple[str, ...]] = {
    "metarm": ("metarm_jax.train.rm:validate_metarm",),
    "ppo": ("metarm_jax.train.ppo:validate",),
    "rlhf": ("metarm_jax.rlhf:validate", "metarm_jax.eval.llm_judge:validate"),
    "rm_eval": ("metarm_jax.eval.rm_eval:validate",),
    "warm": ("metarm_jax.train.rm:validate_warm",),
}


@dataclasses.dataclass
class StageContext:
    """What a stage runs with. The config is resolved here (``defaults.resolve``: every
    "inherit" value filled), so every stage reads the values the saved config.json shows."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    workdir: str

    def __post_init__(self):
        self.config = defaults.resolve(self.config, self.workdir)


class UnknownStageError(ConfigError):
    pass


def check_pipeline(pipeline) -> None:
    unknown = [s for s in pipeline if not isinstance(s, str) or s not in STAGES]
    if unknown:
        raise UnknownStageError(
            f"config.pipeline: unknown stage(s) {unknown}; the stages are {sorted(STAGES)}."
        )


def _load(spec: str) -> Callable:
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def get(name: str) -> Callable[[StageContext], dict[str, Any]]:
    check_pipeline([name])
    return _load(STAGES[name])


def load_function(spec: str, key: str) -> Callable:
    """The function a ``"package.module:function"`` config key names (``ppo.monitor``): the one
    place where the package imports user code by a name in the config."""
    module, _, fn = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    try:
        found = getattr(importlib.import_module(module), fn, None) if module and fn else None
    except (ImportError, TypeError, ValueError) as e:
        raise ConfigError(
            f"config.{key}={spec!r}: cannot import it ({e}); expected 'package.module:function'."
        ) from None
    if not callable(found):
        raise ConfigError(
            f"config.{key}={spec!r}: cannot load it (no function {fn!r} there); expected "
            "'package.module:function'."
        )
    return found


def validators(name: str) -> list[Callable[[ml_collections.ConfigDict], None]]:
    """The registered checks of stage ``name`` (none for most stages)."""
    check_pipeline([name])
    return [_load(spec) for spec in VALIDATORS.get(name, ())]
