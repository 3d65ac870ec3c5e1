"""The study of ``configs/quickstart.py:study=1``, its seeds run as parallel processes.

    python bench/study_parallel.py --workdir runs/study --jobs 3 [--config.KEY=VALUE ...]

``python -m metarm_jax.main --config=configs/quickstart.py:study=1 --workdir=runs/study`` runs the
5 seeds one after another in one process; each seed is the same config with every seed key moved
by its index (``config_lib.with_seed_offset``) in ``<workdir>/seed<i>``. This script runs exactly
those configs (the same flags the one process derives), ``--jobs`` at a time: a run of the tiny
quickstart keeps about one core busy, so on 2 cores two or three at once finish sooner. It then
writes ``seeds.md`` from the seeds' reports (``python -m metarm_jax.rlhf.seeds --aggregate``) and
prints each seed's wall time and the whole study's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from metarm_jax.config import lib as config_lib
from metarm_jax.rlhf import seeds as seeds_lib

CONFIG = "configs/quickstart.py:study=1,seeds=1"


def seed_flags(offset: int, config: str = CONFIG) -> list[str]:
    """--config flags that move every seed key by ``offset``, as ``:seeds=N`` does."""
    return config_lib.seed_offset_flags(config_lib.load_config_file(config), offset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/study")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--config", default=CONFIG, help="e.g. configs/quickstart.py:study=1,seeds=1,world=blind"
    )
    args, extra = ap.parse_known_args()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    waiting = list(range(args.seeds))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    took = {}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            i = waiting.pop(0)
            wd = os.path.join(args.workdir, f"seed{i}")
            cmd = [sys.executable, "-m", "metarm_jax.main", f"--config={args.config}",
                   f"--workdir={wd}", *seed_flags(i, args.config),
                   "--config.train.progress=False", *extra]  # fmt: skip
            with open(os.path.join(args.workdir, f"seed{i}.log"), "w") as log:  # the child keeps it
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running[i] = (proc, time.time())
        time.sleep(5)
        for i, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode:
                    sys.exit(
                        f"seed {i} failed (exit {proc.returncode}); see {args.workdir}/seed{i}.log"
                    )
                took[i] = time.time() - start
                del running[i]
                print(f"seed {i}: {took[i]:.0f} s", flush=True)
    print(seeds_lib.aggregate_reports(args.workdir))
    print(f"study: {args.seeds} seeds, {args.jobs} at a time, {time.time() - t0:.0f} s wall "
          f"({sum(took.values()):.0f} s of seed runs)")  # fmt: skip


if __name__ == "__main__":
    main()
