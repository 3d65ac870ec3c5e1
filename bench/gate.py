"""The blind world's pre-registered gate on SWEEP seeds (never the study's): does MetaRM's premise
hold in a world before any MetaRM number of it is read?

    python bench/gate.py --seeds 100,101 --jobs 2 [--config configs/quickstart.py:world=blind]

For each sweep seed it runs the quickstart world with the arms the gate reads (the method, which
always runs, eta0, the oracle and vanilla PPO; the ceiling is not needed) as its own process,
``--jobs`` at a time, then reads ONLY ``report.json["gate"]`` of each run (docs/synthetic.md, "The
blind world": r_0's accuracy on held-out coarse-saturated pairs in [0.58, 0.68], its spread ratio
on vanilla PPO's final samples at most 0.5, vanilla over-optimising by at least 0.2, the oracle
beating eta0 at each one's peak with an interval above 0). The world passes when every sweep seed
passes. Prints one row per seed and the verdict, and writes ``<workdir>/gate.json``. A run
interrupted part-way resumes where it stopped (the same command).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from metarm_jax.config import lib as config_lib

ARMS = "('eta0','oracle','vanilla_ppo')"
CHECKS = (
    "r0_saturated_accuracy",
    "r0_spread_ratio",
    "vanilla_overoptimises",
    "oracle_minus_eta0_peak",
)


def seed_flags(config: str, offset: int) -> list[str]:
    return config_lib.seed_offset_flags(config_lib.load_config_file(config), offset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.py:world=blind")
    ap.add_argument("--workdir", default="runs/gate")
    ap.add_argument("--seeds", default="100,101", help="sweep seeds (the study uses 0..9)")
    ap.add_argument("--jobs", type=int, default=2)
    args, extra = ap.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(s < 100 for s in seeds):
        sys.exit("bench/gate.py: the gate is measured on sweep seeds (>= 100), never a study's.")
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    waiting, running = list(seeds), {}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            s = waiting.pop(0)
            wd = os.path.join(args.workdir, f"seed{s}")
            if os.path.exists(os.path.join(wd, "report.json")):
                continue
            cmd = [sys.executable, "-m", "metarm_jax.main", f"--config={args.config}",
                   f"--workdir={wd}", *seed_flags(args.config, s), f"--config.rlhf.baselines={ARMS}",
                   "--config.rlhf.diversity=", "--config.train.progress=False", *extra]  # fmt: skip
            with open(os.path.join(args.workdir, f"seed{s}.log"), "w") as log:
                running[s] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for s, proc in list(running.items()):
            if proc.poll() is not None:
                del running[s]
                if proc.returncode:
                    sys.exit(f"seed {s} failed (exit {proc.returncode}); see its log")
        time.sleep(2)
    gates = {}
    for s in seeds:
        with open(os.path.join(args.workdir, f"seed{s}", "report.json")) as f:
            gates[s] = json.load(f)["gate"]  # nothing else of the report is read
    out = {
        "config": args.config,
        "seeds": seeds,
        "per_seed": gates,
        "passed": all(g["passed"] for g in gates.values()),
        "wall_s": round(time.time() - t0, 1),
    }
    with open(os.path.join(args.workdir, "gate.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("| seed | " + " | ".join(CHECKS) + " | passed |")
    print("|" + "---|" * (len(CHECKS) + 2))
    for s, g in gates.items():
        cells = []
        for k in CHECKS:
            v = g[k]["value"]
            cells.append(("n/a" if v is None else f"{v:.3f}") + ("" if g[k]["passed"] else " ✗"))
        print(f"| {s} | " + " | ".join(cells) + f" | {g['passed']} |")
    print(f"gate {'PASSED' if out['passed'] else 'FAILED'} on sweep seeds {seeds}")


if __name__ == "__main__":
    main()
