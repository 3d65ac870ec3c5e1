"""Where a stage writes what: the one place that names the files of a stage's directory, for the
stage that writes them and for every reader (the rounds driver, the report, the tests).

A stage run in directory ``D`` (``StageDir(D)``) leaves

    D/config.json                 the resolved config it ran with (written by the rlhf runner)
    D/DONE.json                   its summary, once finished (the rlhf runner skips it on restart)
    D/<stage>/metrics.jsonl       one row per logged step (the train loop), TensorBoard in D/<stage>/tb
    D/<stage>/checkpoints/        orbax checkpoints (the train loop; the rlhf runner removes them
                                  once D/DONE.json is written, unless rlhf.keep_checkpoints)
    D/export/<name>/              HF exports (``rm``, ``sft``, ``dpo``, ``ppo``, ``ppo_iter<i>``, ...)

This module imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

DONE = "DONE.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass(frozen=True)
class StageDir:
    """The directory of one stage run and the paths inside it."""

    root: str

    def train(self, stage: str) -> str:
        """The train loop's directory of ``stage`` (checkpoints, metrics, TensorBoard)."""
        return os.path.join(self.root, stage)

    def checkpoint_dirs(self) -> list[str]:
        """Every train loop's checkpoint folder in this stage directory (a stage may run more
        than one loop)."""
        return sorted(glob.glob(os.path.join(glob.escape(self.root), "*", CHECKPOINTS)))

    def metrics(self, stage: str) -> str:
        return os.path.join(self.root, stage, METRICS)

    def export(self, name: str) -> str:
        return os.path.join(self.root, "export", name)

    @property
    def done(self) -> str:
        return os.path.join(self.root, DONE)

    @property
    def config(self) -> str:
        return os.path.join(self.root, CONFIG)


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (a missing file has no rows)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
