"""Real multi-process JAX: two local processes join one cluster on 127.0.0.1 (gloo collectives),
load an HF checkpoint sharded across both, and run the jitted forward on the global mesh."""

import os
import socket
import subprocess
import sys

from metarm_jax.models import hf, llama
from tests.conftest import REPO
from tests.xla_env import xla_flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_one_mesh(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf.save_hf(llama.create(llama.preset("tiny"), "lm", seed=1), str(ckpt))
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=xla_flags(4),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "metarm_jax.main",
                    "--config=configs/quickstart.py",
                    f"--workdir={tmp_path / 'run'}",
                    f"--config.model.hf_path={ckpt}",
                    "--config.mesh.data=2",
                    "--config.mesh.fsdp=2",
                    "--config.mesh.tensor=2",
                    "--config.pipeline=('inspect',)",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    for rc, _, err in outs:
        assert rc == 0, err[-3000:]
    lead = outs[0][1]
    assert "devices: 8 (cpu) on 2 process(es); mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in lead
    assert '"finite": true' in lead and '"output_shape": [8, 32, 256]' in lead
    assert "== stage" not in outs[1][1]  # only process 0 prints
