"""Entry point: ``python -m metarm_jax.main --config=configs/X.py[:arg] [--config.a.b=v ...]``.

Loads the config file and its overrides, validates every value (``config_lib.validate``) before
JAX starts, joins the multi-host cluster when launched on one, checks the mesh and batch sizes
against the devices, prints the config resolved, and runs the stages in ``config.pipeline`` in
order. Every config error is one line on stderr and exit code 2, before any stage runs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from metarm_jax import sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.config import stages
from metarm_jax.runtime import hosts
from metarm_jax.runtime.errors import PREEMPTED_EXIT_CODE, ConfigError, Preempted, UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
_CONFIG: flags.FlagHolder | None = None  # defined by _parse_flags from the loaded config file
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def usage() -> str:
    """The --help text: the command, the shipped configs and their arguments, where the keys are
    documented."""
    here = os.getcwd()
    rows = [
        (os.path.relpath(path, here) if path.startswith(here + os.sep) else path, doc, args)
        for path, doc, args in config_lib.shipped_configs()
    ]
    width = max((len(p) for p, _, _ in rows), default=0)
    lines = [
        "usage: python -m metarm_jax.main --config=FILE.py[:ARGS] [--workdir=DIR] "
        "[--config.KEY=VALUE ...]",
        "",
        "--config=FILE.py[:ARGS]  a config file: get_config(ARGS) builds the run's config; any "
        "file of yours works too.",
        "--config.KEY=VALUE       overrides one key, e.g. --config.train.lr=1e-4 "
        "--config.pipeline=inspect,sft",
        "--workdir=DIR            the run directory (default runs/<config name>); the same "
        "command again resumes.",
        "",
        "Shipped configs (ARGS: name=value and bare words, comma-separated):",
    ]
    lines += [
        f"  {p:{width}s}  {doc}" + (f"\n  {'':{width}s}  ARGS: {a}" if a else "")
        for p, doc, a in rows
    ]
    if not rows:
        lines.append(f"  (none: {config_lib.CONFIG_DIR} is missing)")
    lines += [
        "",
        f"Stages (config.pipeline, run in order): {', '.join(stages.STAGES)}.",
        "Keys: every key with its default and meaning is in metarm_jax/config/defaults.py (one function "
        "per block); the README's",
        "'Configuration' section says which docs/ page explains each block. Every value is "
        "checked before any stage runs:",
        "a bad one stops the run with one line on stderr and exit code 2.",
    ]
    return "\n".join(lines)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    hosts.stop_peer_watch()  # an orderly exit: the other processes are not told "lost"
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for people (no traceback). The config file is
    loaded once, here (its own argument errors are one line too), and its keys become the
    ``--config.KEY`` flags."""
    global _CONFIG
    if any(a in _HELP for a in argv[1:]):
        print(usage())
        sys.exit(0)
    specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if len(specs) != 1:
        _fail(
            "--config=configs/X.py[:arg] is required, once (try --config=configs/quickstart.py; "
            "--help lists the configs)."
        )
    rest = [a for a in argv if not a.startswith("--config=")]
    overrides = [m.group(1) for a in rest[1:] if (m := re.match(r"--config\.([^=]+)=", a))]
    try:
        config = config_lib.load_config_file(specs[0])
        config_lib.check_override_keys(config, overrides)
        _CONFIG = config_flags.DEFINE_config_dict(
            "config", config, "The config of --config=FILE.py[:ARGS].", sys_argv=rest
        )
        remaining = flags.FLAGS(rest)
        parsed = _CONFIG.value
        with parsed.unlocked():  # --config.pipeline=inspect,sft: two stages
            parsed.pipeline = config_lib.pipeline_stages(parsed.pipeline)
        return remaining
    except UserError as e:
        _fail(str(e))
    except flags.Error as e:
        _fail(f"bad flag: {e}")


def maybe_initialize_distributed(dist) -> None:
    """Join the multi-host JAX cluster (TPU pod, SLURM, or explicit coordinator)."""

    env_coord = os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    explicit = dist.coordinator_address or env_coord
    launched = explicit or "SLURM_JOB_ID" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ
    if dist.mode == "off" or (dist.mode == "auto" and not launched):
        return
    if explicit:
        num = dist.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
        pid = (
            dist.process_id if dist.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
        )
        if num <= 0 or pid < 0:
            raise ConfigError(
                "distributed: a coordinator address needs num_processes and process_id "
                "(config.distributed.* or JAX_NUM_PROCESSES/JAX_PROCESS_ID)."
            )
        if jax.config.jax_platforms in (None, "", "cpu") and dist.cpu_collectives:
            jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
        jax.distributed.initialize(
            coordinator_address=explicit,
            num_processes=num,
            process_id=pid,
            heartbeat_timeout_seconds=int(dist.heartbeat_timeout_s),
        )
    else:  # TPU pod / SLURM: JAX finds the cluster itself.
        jax.distributed.initialize(heartbeat_timeout_seconds=int(dist.heartbeat_timeout_s))
    hosts.start_peer_watch(timeout_s=float(dist.heartbeat_timeout_s))


# Runtime errors that mean another process of the run is gone (its connection reset, its
# heartbeats stopped), not a bug of this one.
_PEER_LOST = (
    "Connection reset",
    "Connection refused",
    "heartbeat",
    "unhealthy",
    "Gloo",
    "NCCL",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "Barrier failed",
)


def _lost_peer(e: BaseException) -> bool:
    return jax.process_count() > 1 and any(m in str(e) for m in _PEER_LOST)


def default_workdir(spec: str) -> str:
    path, _, arg = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f"_{arg}" if arg else "")
    return os.path.join("runs", re.sub(r"[^A-Za-z0-9_.=-]+", "_", name))


def run_pipeline(config, mesh, workdir: str) -> dict:
    """Run config.pipeline's stages in order; returns {stage: summary}."""
    ctx = stages.StageContext(config=config, mesh=mesh, workdir=workdir)
    out = {}
    for name in config.pipeline:
        t0 = time.time()
        if jax.process_index() == 0:
            print(f"== stage {name}", flush=True)
        summary = stages.get(name)(ctx) or {}
        if jax.process_index() == 0:
            print(
                f"== stage {name} done in {time.time() - t0:.1f}s: "
                f"{json.dumps(summary, default=str)}",
                flush=True,
            )
        out[name] = summary
    return out


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax/grain INFO lines drown the progress output
    config = _CONFIG.value
    spec = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config="))
    workdir = _WORKDIR.value or config.workdir or default_workdir(spec)
    try:
        with config.unlocked():
            config.workdir = workdir
        config_lib.validate(config)  # every value, before JAX starts (and before any stage)
        maybe_initialize_distributed(config.distributed)
        hosts.watch_preemption()  # SIGTERM: save at the same point on every process, exit 75
        config_lib.check_devices(config, jax.device_count())
        raw, config = config, config_lib.resolve(config, workdir)
        mesh = sharding.make_mesh(dict(config.mesh))
        if jax.process_index() == 0:
            print("resolved config:\n" + str(config))
            print(
                f"devices: {jax.device_count()} ({jax.devices()[0].platform}) on "
                f"{jax.process_count()} process(es); mesh {dict(mesh.shape)}; workdir {workdir}"
            )
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        seeds = int(config.seeds)
        runs = (
            [(config, workdir)]
            if seeds <= 1
            else [
                # each seed resolves its own copy (its workdir places its default outputs)
                (config_lib.with_seed_offset(raw, i), os.path.join(workdir, f"seed{i}"))
                for i in range(seeds)
            ]
        )
        for cfg, wd in runs:
            run_pipeline(cfg, mesh, wd)
        if seeds > 1 and jax.process_index() == 0 and "rlhf" in config.pipeline:
            from metarm_jax.rlhf import seeds as seeds_lib  # matplotlib: only when needed

            print(seeds_lib.aggregate_reports(workdir))  # seed*/report.json: tables and figure
        hosts.stop_peer_watch()
    except UserError as e:
        _fail(str(e))
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        hosts.stop_peer_watch()
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as e:
        if not _lost_peer(e):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        hosts.peer_lost_exit("a collective failed", first)


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
