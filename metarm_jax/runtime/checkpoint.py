"""The ONE checkpoint manager: orbax CheckpointManager over {train state, data iterators}.

A checkpoint at step s is a directory ``<dir>/<s>/`` with one orbax item per part:

    state        params, optimizer state, step, rng and the non-finite counters (a pytree of
                 jax.Arrays, saved sharded; restored onto the *current* mesh's shardings, so a
                 run may resume on a different mesh shape than it was saved on)
    data_<name>  each named grain iterator's position (grain's orbax handler; one JSON per process)

Saves are asynchronous (the device->host copy happens before ``save`` returns, so the caller may
donate the arrays right after) and only the last ``keep`` are kept. orbax writes into a temporary
directory and renames it when complete, so a crash mid-save leaves no step directory; a step
directory that still fails to restore (corrupt, truncated, from another model) is reported, moved
aside as ``<dir>/corrupt-<s>``, and the previous checkpoint is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from metarm_jax.runtime import faults
from metarm_jax.runtime.errors import UserError


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[metarm_jax] {msg}", flush=True)


class IteratorHandler(grain.checkpoint.CheckpointHandler):
    """grain's handler (one ``process_<i>-of-<n>.json`` per process), restoring also on another
    number of processes: the stages' iterators hold the same position on every host (the global
    stream is split by host, and every host takes the same number of batches), so when this
    process's file is absent the saved files must agree and any one of them is the position."""

    def restore(self, directory, item=None, args=None):
        item = item or args.item
        index, count = jax.process_index(), jax.process_count()
        if (directory / f"process_{index}-of-{count}.json").exists():
            return super().restore(directory, item=item)
        saved = sorted(directory.glob("process_*-of-*.json"))
        states = {f.read_text() for f in saved}
        if not saved:
            raise ValueError(f"{directory}: no data-iterator state.")
        if len(states) != 1:
            raise UserError(
                f"{directory}: the data-iterator positions saved by {len(saved)} processes "
                f"differ, so they cannot be restored on {count} process(es); resume with the "
                "number of processes that wrote the checkpoint."
            )
        state = states.pop()
        item.set_state(
            json.loads(state) if isinstance(item, grain.DatasetIterator) else state.encode()
        )
        item.start_prefetch()
        _log(f"restored the data position written by {len(saved)} process(es) ({directory.name}).")
        return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    item: Any


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of jax.Arrays: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class _Manager(ocp.CheckpointManager):
    """orbax's manager, minus its calls to JAX's preemption sync point: orbax passes checkpoint
    step numbers to it, which would mix a second count into the one ``hosts.preemption_point``
    keeps (the sync point is a count of calls; see metarm_jax/runtime/hosts.py). The train loop decides
    when to save for a preemption itself."""

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


class Checkpointer:
    """Save / restore {train state, data iterators}; keeps the last ``keep`` (``train.keep``),
    saved in the background with ``async_save`` (``train.async_checkpoints``)."""

    def __init__(self, directory: str, *, keep: int, async_save: bool):
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.async_save = async_save
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=self.async_save
        )
        return _Manager(self.directory, options=options)

    # ------------------------------------------------------------------ queries

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # ------------------------------------------------------------------ save

    def save(self, step: int, state: Any, iterators: Mapping[str, Any] = ()) -> None:
        """Start saving ``state`` (a pytree of jax.Arrays) and each iterator's position at ``step``."""
        items = {"state": ocp.args.StandardSave(state)}
        for name, it in dict(iterators).items():
            items[f"data_{name}"] = IteratorSave(it)
        with self._storage_errors(step):
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
            faults.point("checkpoint_saving")  # the write is in flight (async) here

    def wait(self) -> None:
        with self._storage_errors(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._storage_errors(None):
            self._manager.wait_until_finished()
        self._manager.close()

    @contextlib.contextmanager
    def _storage_errors(self, step: int | None):
        """A failed write (a full disk, a quota, an I/O error, also one raised by the async
        writer) stops the run with one line; orbax writes each step into a temporary folder and
        renames it when complete, so the checkpoints before it stay restorable."""
        try:
            yield
        except Exception as e:
            chain, err = [], e
            while err is not None:
                chain.append(err)
                err = err.__cause__ or err.__context__
            os_err = next((x for x in chain if isinstance(x, OSError)), None)
            text = " ".join(str(x) for x in chain)
            if os_err is None and "No space left" not in text and "Errno" not in text:
                raise
            good = [s for s in self.all_steps() if step is None or s < step]
            where = (
                f"the last complete checkpoint, {self.step_dir(good[-1])}, is intact"
                if good
                else "no earlier checkpoint exists"
            )
            what = os.strerror(os_err.errno) if os_err is not None and os_err.errno else text[:200]
            raise UserError(
                f"checkpoint {self.step_dir(step) if step is not None else self.directory}: "
                f"the write failed ({what}); {where}. Free space (or fix the storage) and run "
                "the same command again to resume from it."
            ) from None

    # ------------------------------------------------------------------ restore

    def restore_step(
        self, step: int, abstract_state: Any, iterators: Mapping[str, Any] = ()
    ) -> Any:
        """Restore one step: the state onto ``abstract_state``'s shardings; iterators in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        for name, it in dict(iterators).items():
            items[f"data_{name}"] = IteratorRestore(it)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_latest(
        self, abstract_state: Any, iterators: Mapping[str, Any] = ()
    ) -> tuple[Any, int] | None:
        """(state, step) from the newest checkpoint that restores, or None if there is none.

        A checkpoint that fails is reported (with the reason), moved aside to
        ``corrupt-<step>`` so the run can save that step again, and the previous one is tried.
        """
        failed = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore_step(step, abstract_state, iterators)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                aside = os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}")
                if jax.process_index() == 0:
                    os.rename(self.step_dir(step), aside)
                _log(
                    f"checkpoint {self.step_dir(step)} is incomplete or corrupt ({reason[:300]}); "
                    f"moved it to {aside} and trying the previous one."
                )
                failed.append(step)
                self._manager.close()
                self._manager = self._open()
                continue
            if failed:
                _log(f"resumed from step {step} instead of {failed[0]}.")
            return state, step
        if failed:
            raise UserError(
                f"no checkpoint in {self.directory} could be restored (tried steps {failed}; they were "
                f"moved aside as corrupt-<step>). Start a fresh run with another workdir, or remove "
                f"{self.directory} to start over in this one."
            )
        return None
