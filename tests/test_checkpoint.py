"""Checkpoints: exact resume after SIGKILL, fallback from a corrupt latest, restore on another mesh."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from metarm_jax import models, sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.models import llama
from metarm_jax.runtime.checkpoint import Checkpointer, abstract_like
from metarm_jax.train import loop, optim
from tests.resume_util import assert_same_exports, kill_at_checkpoint
from tests.xla_env import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

# A real run of the metarm stage (pref + meta iterators, AdamW, clipping, warm-up) in its own
# process; SLOW > 0 sleeps that long per step so the test can kill it mid-run.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import jax
    from metarm_jax import sharding
    from metarm_jax.config import lib as config_lib, stages
    from metarm_jax.train import rm
    from tests import marker_task
    workdir, steps, slow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    c = config_lib.base_config()
    c.train.update(dict(steps=steps, lr=1e-3, warmup=2, save_every=3,
                        keep=2, eval_every=0, progress=False))
    c.data.update(dict(pref_batch_size=4, meta_batch_size=2))
    c.meta.update(dict(k=3, eta=0.05))
    if slow:
        put = sharding.global_batch
        sharding.global_batch = lambda mesh, b: (time.sleep(slow), put(mesh, b))[1]
    mesh = sharding.make_mesh({"data": 1})
    data = marker_task.stage_data(c, True, num_train=64, num_val=16, num_meta=16, seq_len=16)
    rm.run_metarm(stages.StageContext(c, mesh, workdir), data=data)
""")


def _driver(tmp_path, workdir, steps, slow=0.0, wait=True):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=xla_flags(1))  # one CPU device
    proc = subprocess.Popen(
        [sys.executable, str(script), str(workdir), str(steps), str(slow)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        return out
    return proc


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    steps = 15
    _driver(tmp_path, tmp_path / "straight", steps)
    killed = tmp_path / "killed"
    proc = _driver(tmp_path, killed, steps, slow=0.25, wait=False)
    kill_at_checkpoint(proc, killed / "metarm" / "checkpoints", 6)
    assert not (killed / "export").exists()  # it really died mid-run
    out = _driver(tmp_path, killed, steps)
    assert "resuming metarm from" in out
    assert_same_exports(tmp_path / "straight", killed, "rm")


def _toy_state(mesh, seed=0):
    model = llama.create(llama.preset("tiny"), "reward", seed=seed, mesh=mesh)
    params = models.split(model).params
    opt, _ = optim.optimizer(config_lib.base_config().train, 10)
    return loop.init_state(params, opt, 0, loop.state_shardings(mesh, params, opt))


def test_corrupt_latest_falls_back_to_previous(tmp_path, capsys):
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    ck = Checkpointer(str(tmp_path), keep=3, async_save=False)
    s1, s2 = _toy_state(mesh, seed=1), _toy_state(mesh, seed=2)
    ck.save(3, s1)
    ck.save(6, s2)
    ck.wait()
    # Garble every data file of step 6 (a disk error / truncated copy).
    for f in (tmp_path / "6" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.name != "commit_success.txt":
            f.write_bytes(b"\x00garbage" * 3)
    restored, step = ck.restore_latest(abstract_like(s1))
    assert step == 3
    assert "corrupt" in capsys.readouterr().out
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ck.all_steps() == [3] and any(p.startswith("corrupt-6") for p in os.listdir(tmp_path))
    ck.save(6, s2)  # the run can save step 6 again
    ck.close()


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_restore_onto_a_different_mesh(tmp_path):
    save_mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = _toy_state(save_mesh)
    ck = Checkpointer(str(tmp_path), keep=1, async_save=True)
    ck.save(1, state)
    ck.wait()
    new_mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    target = abstract_like(_toy_state(new_mesh, seed=5))
    restored, step = ck.restore_latest(target)
    ck.close()
    assert step == 1
    for a, b, t in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == t.sharding
