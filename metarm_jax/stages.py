"""The pipeline stages that ``python -m metarm_jax.main`` runs, in ``config.pipeline`` order.

Stages are registered by name as ``"module:function"`` so that importing this file stays cheap
(and so that this registry, which every stage module may import, imports none of them); each
stage is ``fn(ctx: StageContext) -> dict`` (a summary of what it did, logged by main).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import ml_collections
from jax.sharding import Mesh

from metarm_jax import config_lib
from metarm_jax.errors import ConfigError

STAGES: dict[str, str] = {
    "inspect": "metarm_jax.inspect_stage:run",
    "rm": "metarm_jax.train.rm:run_rm",
    "metarm": "metarm_jax.train.rm:run_metarm",
    "build_meta": "metarm_jax.build_meta:run",
    "sft": "metarm_jax.train.sft:run_sft",
    "dpo": "metarm_jax.train.dpo:run_dpo",
    "ppo": "metarm_jax.train.ppo:run_ppo",
    "rlhf": "metarm_jax.rlhf:run",
}


@dataclasses.dataclass
class StageContext:
    """What a stage runs with. The config is resolved here (``config_lib.resolve``: every
    "inherit" value filled), so every stage reads the values the saved config.json shows."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    workdir: str

    def __post_init__(self):
        self.config = config_lib.resolve(self.config, self.workdir)


class UnknownStageError(ConfigError):
    pass


def check_pipeline(pipeline) -> None:
    unknown = [s for s in pipeline if s not in STAGES]
    if unknown:
        raise UnknownStageError(
            f"config.pipeline: unknown stage(s) {unknown}; the stages are {sorted(STAGES)}."
        )


def get(name: str) -> Callable[[StageContext], dict[str, Any]]:
    check_pipeline([name])
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)
