"""Soak: kill the iterative pipeline at many moments, resume it each time with the same command,
and check that it ends exactly where an uninterrupted run ends.

    .venv/bin/python bench/soak.py --kills=24 --seed=0 --workdir=runs/soak
    .venv/bin/python bench/soak.py --kills=3 --config=configs/quickstart.py:fast=1 -- --config.x=y

A reference run goes first (uninterrupted). Then the same command runs again in another workdir
and is SIGKILLed again and again: half of the kills at a seeded random time after the restart,
half at a chosen moment through ``METARM_FAULT`` (metarm_jax/runtime/faults.py: a stage's start, an async checkpoint write
in flight, a build_meta chunk written before its manifest, a DONE.json marker, the report), each
run picking up where the last one died. When a run ends before its kill lands (nothing was left
to kill), that cycle is complete: its outputs are compared and the next kills start a fresh
cycle in an emptied workdir. After the last kill the command runs to the end. Then, per cycle,
every exported model (``*/export/*/model.safetensors``) and ``report.json`` must equal the
reference's byte for byte (in report.json the workdir's own path is replaced by ``<workdir>``
first: the only string that differs by design). Prints (and writes ``<workdir>/soak.json``) every kill: when, where
the run was (the step directories that existed), and the result.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
POINTS = (
    "stage_start:sft",
    "stage_start:rm",
    "stage_start:build_meta",
    "stage_start:metarm",
    "stage_start:ppo",
    "stage_start:dpo",
    "checkpoint_saving",
    "build_meta_chunk",
    "done_marker",
    "report",
)


def _cmd(config: str, workdir: pathlib.Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "metarm_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.train.progress=False",
        *extra,
    ]


def _env(fault: str | None = None, extra: dict | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **(extra or {}))
    env.pop("METARM_FAULT", None)
    if fault:
        env["METARM_FAULT"] = fault
    return env


def _where(workdir: pathlib.Path) -> str:
    """The steps done and the step in progress (by their DONE.json markers and folders)."""
    done = sorted(str(p.parent.relative_to(workdir)) for p in workdir.rglob("DONE.json"))
    return f"{len(done)} steps done, last {done[-1] if done else '-'}"


def outputs(workdir: pathlib.Path) -> dict[str, bytes]:
    files = {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in workdir.glob("**/export/*/model.safetensors")
    }
    report = workdir / "report.json"
    if report.exists():
        # The report names its data by path, and the two runs live in different workdirs: that
        # one string is the only thing allowed to differ.
        files["report.json"] = report.read_bytes().replace(str(workdir).encode(), b"<workdir>")
    return files


def _plan(rng: random.Random, kills: int, window: float):
    """Kills drawn until `kills` have landed (at most 4x as many tries): even tries at a moment
    the code names (its 1st or 2nd occurrence after the restart), odd ones at a seeded time after
    the restart. A try whose moment never comes (the run ends first) completes a cycle."""
    points = list(POINTS)
    rng.shuffle(points)
    for i in range(4 * kills):
        if i % 2 == 0:
            point = points[(i // 2) % len(points)]
            nth = 1 if point.startswith(("stage_start", "report")) else rng.randint(1, 2)
            yield ("point", f"{point}:{nth}")
        else:
            yield ("time", rng.uniform(5.0, max(6.0, window)))


def run_soak(
    config: str,
    workdir: pathlib.Path,
    kills: int,
    seed: int,
    extra: list[str],
    log=print,
    env: dict | None = None,
    plan: list[tuple[str, object]] | None = None,
    kill_window: float = 0.0,
) -> dict:
    ref, soak = workdir / "ref", workdir / "soak"
    t0 = time.time()
    if not (ref / "report.json").exists():
        res = subprocess.run(
            _cmd(config, ref, extra), cwd=REPO, env=_env(None, env), capture_output=True, text=True
        )
        if res.returncode:
            raise RuntimeError(f"the reference run failed:\n{res.stderr[-3000:]}")
        (ref / "reference_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    # the kill times are drawn from the reference's duration (kept for a later soak that reuses it)
    t_ref = (
        float((ref / "reference_s.txt").read_text()) if (ref / "reference_s.txt").exists() else 0.0
    )
    if plan is None:
        plan = _plan(random.Random(seed), kills, kill_window or 0.5 * t_ref)
    events, cycles = [], []

    def landed() -> int:
        return sum(e["status"] == "killed" for e in events)

    def finish_cycle(rc: int) -> None:
        """Compare this cycle's outputs with the reference's, then start the next one afresh."""
        a, b = outputs(ref), outputs(soak)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        killed = landed() - sum(c["kills"] for c in cycles)
        cycles.append({"kills": killed, "exit": rc, "compared_files": len(a), "differ": differ})
        log(f"cycle {len(cycles)}: {killed} kills, exit {rc}, differ: {differ or 'none'}")
        if differ or rc:  # kept for a look: the workdir of a cycle that went wrong
            soak.rename(workdir / f"cycle{len(cycles)}-failed")
        else:
            shutil.rmtree(soak)

    for kind, what in plan:
        if landed() >= kills:
            break  # a drawn plan runs until `kills` kills have landed
        before = _where(soak) if soak.exists() else "fresh"
        fault = what if kind == "point" else None
        proc = subprocess.Popen(
            _cmd(config, soak, extra), cwd=REPO, env=_env(fault, env),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        if kind == "time":
            try:
                proc.wait(timeout=what)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        rc = proc.returncode
        status = {-9: "killed", 0: "finished"}.get(rc, f"exit {rc}")
        ev = {"kill": kind, "at": what if kind == "point" else round(what, 1), "before": before,
              "after": _where(soak), "status": status}  # fmt: skip
        if rc not in (0, -9):
            ev["stderr"] = err[-1500:]
        events.append(ev)
        log(f"kill {len(events)}: {kind} {ev['at']}: {status}; {before} -> {ev['after']}")
        if rc not in (0, -9):  # an error: stop here, the event says what
            break
        if rc == 0:  # the run ended before this kill: this cycle is complete
            finish_cycle(0)
    last = events[-1]["status"] if events else "killed"
    final_rc = 0 if last in ("killed", "finished") else 1  # 1: a run failed (its event says)
    if last == "killed":  # the last cycle is mid-run: the same command, to the end
        final = subprocess.run(
            _cmd(config, soak, extra), cwd=REPO, env=_env(None, env), capture_output=True,
            text=True,
        )  # fmt: skip
        final_rc = final.returncode
        finish_cycle(final_rc)
    differ = sorted({f for c in cycles for f in c["differ"]})
    result = {
        "config": config,
        "extra": extra,
        "seed": seed,
        "reference_s": round(t_ref, 1),
        "kills": events,
        "kills_landed": landed(),
        "cycles": cycles,
        "final_exit": final_rc,
        "compared_files": min((c["compared_files"] for c in cycles), default=0),
        "differ": differ,
        "identical": final_rc == 0
        and bool(cycles)
        and all(c["exit"] == 0 and not c["differ"] and c["compared_files"] > 0 for c in cycles),
    }
    (workdir / "soak.json").write_text(json.dumps(result, indent=1))
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/soak")
    ap.add_argument("--config", default="configs/quickstart.py:fast=1")
    ap.add_argument(
        "--kill-window", type=float, default=0.0,
        help="timed kills fall 5..S s after a restart (default: half the reference run's time)",
    )  # fmt: skip
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    res = run_soak(
        args.config, pathlib.Path(args.workdir).resolve(), args.kills, args.seed, extra,
        kill_window=args.kill_window,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in res.items() if k != "kills"}, indent=1))
    sys.exit(0 if res["identical"] else 1)


if __name__ == "__main__":
    main()
