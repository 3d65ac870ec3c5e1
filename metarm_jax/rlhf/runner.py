"""Steps of an rlhf run: each an ordinary stage in its own directory, run once.

A finished step leaves ``DONE.json`` (its summary) and is skipped on restart; a step that was
killed resumes from its own checkpoints (the loop's orbax checkpoints, build_meta's chunks).
Once ``DONE.json`` is written, nothing reads the step's checkpoints again (later steps and the
report read its exports, metrics and samples), so they are removed unless
``rlhf.keep_checkpoints``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax

from metarm_jax.config import stages
from metarm_jax.config.lib import derive
from metarm_jax.runtime import faults, fileio, hosts
from metarm_jax.runtime.errors import ConfigError, Preempted
from metarm_jax.runtime.layout import StageDir


class Runner:
    """Runs sub-stages in their own directories under ``ctx.workdir``, once each."""

    def __init__(self, ctx: stages.StageContext):
        self.ctx = ctx
        self.config = ctx.config
        self.lead = jax.process_index() == 0

    def step(self, name: str, stage: str, overrides: dict[str, Any]) -> dict:
        """Run ``stage`` in ``<workdir>/<name>`` with the run's config plus ``overrides``;
        returns its summary (with ``seconds`` and ``workdir``)."""
        workdir = os.path.join(self.ctx.workdir, name)
        where = StageDir(workdir)
        if os.path.exists(where.done):
            self._drop_checkpoints(where)  # left by a run stopped while it removed them
            with open(where.done) as f:
                return json.load(f)
        if hosts.preemption_point():
            raise Preempted(
                f"rlhf stopped before its step {name} on a preemption notice (SIGTERM); every "
                "finished step is kept. Run the same command again to go on from there."
            )
        if self.lead:
            print(f"-- rlhf: {name} ({stage})", flush=True)
        config = derive(self.config, overrides)
        with config.unlocked():
            config.workdir = workdir
        t0 = time.time()
        sub = stages.StageContext(config, self.ctx.mesh, workdir)
        if self.lead:  # what this step ran with, resolved (arms are compared by these files)
            fileio.write_text(where.config, sub.config.to_json_best_effort(indent=1))
        faults.point(f"stage_start:{stage}")
        summary = stages.get(stage)(sub) or {}
        summary = dict(summary, seconds=round(time.time() - t0, 1), workdir=workdir)
        faults.point("done_marker")
        if self.lead:
            fileio.write_json(where.done, summary, indent=1, default=_jsonable)
        self._drop_checkpoints(where)
        hosts.barrier(f"rlhf:{name}:done")  # a restart on any process sees the same steps done
        return json.loads(json.dumps(summary, default=_jsonable))

    def _drop_checkpoints(self, where: StageDir) -> None:
        """Remove a finished step's train checkpoints (process 0; its DONE.json is written)."""
        if not self.lead or self.config.rlhf.keep_checkpoints:
            return
        for path in where.checkpoint_dirs():
            shutil.rmtree(path, ignore_errors=True)

    def path(self, *parts) -> str:
        return os.path.join(self.ctx.workdir, *parts)


def _jsonable(x):
    try:
        return float(x) if getattr(x, "ndim", 1) == 0 else x.tolist()
    except Exception:
        return str(x)


def export_of(summary: dict, kind: str) -> str:
    path = summary.get("export")
    if not path:
        raise ConfigError(f"rlhf: the {kind} step exported nothing (is its export switched off?).")
    return path
