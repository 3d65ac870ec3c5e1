"""Shared pieces of the kill-and-resume tests: SIGKILL a real run at a checkpoint, compare exports."""

import pathlib
import signal
import time


def kill_at_checkpoint(proc, ckpt_dir: pathlib.Path, step: int, timeout: float = 240) -> None:
    """SIGKILL ``proc`` once the orbax checkpoint ``step`` in ``ckpt_dir`` is committed."""
    deadline = time.time() + timeout
    while not (ckpt_dir / str(step) / "commit_success.txt").exists() and proc.poll() is None:
        assert time.time() < deadline, f"the run never reached step {step}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def exported(workdir, stage: str) -> dict:
    """The tensors a stage exported to ``workdir/export/<stage>``."""
    from safetensors.numpy import load_file

    return load_file(str(pathlib.Path(workdir) / "export" / stage / "model.safetensors"))


def assert_same_exports(workdir_a, workdir_b, stage: str) -> None:
    """Both runs exported bitwise-identical tensors for ``stage``."""
    import numpy as np

    a, b = exported(workdir_a, stage), exported(workdir_b, stage)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
