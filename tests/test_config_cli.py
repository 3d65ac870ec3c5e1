"""The entry point as a user runs it: overrides, validation messages, the inspect stage."""

import json
import os
import subprocess
import sys

import pytest

from metarm_jax import models
from metarm_jax.config import lib as config_lib
from metarm_jax.runtime.errors import ConfigError
from tests.conftest import REPO
from tests.xla_env import xla_flags


def run_main(*args, devices=2, cwd=REPO):
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(devices),
        JAX_PLATFORMS="cpu",
    )
    return subprocess.run(
        [sys.executable, "-m", "metarm_jax.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quickstart_inspect_runs_with_overrides(tmp_path):
    res = run_main(
        "--config=configs/quickstart.py",
        f"--workdir={tmp_path}",
        "--config.pipeline=('inspect',)",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=2",
        "--config.model.scan_layers=False",
        "--config.inspect.seq_len=16",
        "--config.model.preset=tiny_mha",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mesh"] == {"data": 1, "fsdp": 2, "tensor": 0 + 1}
    assert saved["model"]["scan_layers"] is False and saved["model"]["preset"] == "tiny_mha"
    assert saved["inspect"]["seq_len"] == 16
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in res.stdout
    assert "layers.q" in res.stdout and "P(None, 'fsdp', 'tensor', None)" in res.stdout
    assert '"output_shape": [8, 16, 64]' in res.stdout  # the quickstart's 64-token vocabulary


def test_runlocal_variant_and_hf_checkpoint(tmp_path):
    from metarm_jax.models import hf, llama

    ckpt = tmp_path / "ckpt"
    hf.save_hf(llama.create(llama.preset("tiny"), "reward"), str(ckpt))
    res = run_main(
        "--config=configs/hh_rlhf.py:runlocal",
        f"--workdir={tmp_path / 'run'}",
        f"--config.model.hf_path={ckpt}",
        "--config.inspect.head=reward",
        "--config.pipeline=('inspect',)",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"head": "reward"' in res.stdout and '"output_shape": [8]' in res.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config.model.presett=tiny"],
            "error: --config.model.presett: unknown config key. Did you mean --config.model.preset?",
        ),
        (["--config.nope=1"], "error: --config.nope: unknown config key."),
        (
            ["--config.mesh.data=3"],
            "error: config.mesh: {'data': 3, 'fsdp': 1, 'tensor': 1} uses 3 devices but 2 are available",
        ),
        (
            ["--config.inspect.batch_size=7"],
            "error: config.inspect.batch_size=7 is not a positive multiple of the data-parallel size 2",
        ),
        (
            ["--config.model.hf_path=/no/such/dir"],
            "error: config.model.hf_path='/no/such/dir': no such directory",
        ),
        (
            ["--config.model.preset=llama3_8b"],
            "error: config.model.preset='llama3_8b': unknown preset",
        ),
        (
            ["--config.pipeline=('inspect','nope')"],
            "error: config.pipeline: unknown stage(s) ['nope']",
        ),
        (
            ["--config.inspect.batch_size=many"],
            "error: bad flag: flag --config.inspect.batch_size=many",
        ),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, args, message):
    res = run_main("--config=configs/quickstart.py", f"--workdir={tmp_path}", *args)
    assert res.returncode == 2
    assert res.stderr.startswith(message), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_config_file():
    res = run_main("--config=configs/nope.py")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: --config=configs/nope.py: file 'configs/nope.py' not "
        "found (configs live in configs/*.py)."
    )


def test_validate_in_process():
    config = config_lib.load_config_file(str(REPO / "configs/hh_rlhf.py"))
    config_lib.validate(config, 8)  # fsdp=-1 fills 8 devices; batch 16 divides
    config.inspect.batch_size = 12
    with pytest.raises(
        ConfigError, match="batch_size=12 is not a positive multiple of the data-parallel size 8"
    ):
        config_lib.validate(config, 8)
    assert (
        models.model_config(
            config_lib.load_config_file(str(REPO / "configs/hh_rlhf.py")).model
        ).num_params("lm")
        == 6_738_415_616
    )  # Llama-2-7B


def test_seed_offset_flags_rebuild_what_with_seed_offset_makes():
    """The flags a parallel seed process gets (bench/study_parallel.py, bench/valid_sweep.py) set
    exactly the seeds ``:seeds=N`` would give seed i, and nothing else."""
    base = config_lib.load_config_file(str(REPO / "configs" / "quickstart.py"))
    for offset in (0, 3):
        flags = config_lib.seed_offset_flags(base, offset)
        over = {}
        for f in flags:
            key, _, value = f.removeprefix("--config.").partition("=")
            over[key] = int(value)
        want = config_lib.with_seed_offset(config_lib.derive(base, {"workdir": "w"}), offset)
        got = config_lib.derive(base, {**over, "workdir": want.workdir})
        assert got.to_dict() == want.to_dict()
        assert (flags == []) == (offset == 0)


def test_the_blind_world_variant_changes_only_its_three_settings():
    """configs/quickstart.py:world=blind: sampling stops at the longest base response, the base
    data exercises the fine part more, and the KL anchor is weaker (the gate's second try); every
    other key is the quickstart's. A world name it does not know is one clear line."""
    base = config_lib.load_config_file("configs/quickstart.py")
    blind = config_lib.load_config_file("configs/quickstart.py:world=blind")
    assert blind.sampling.max_new_tokens == blind.world.response_len[1] == 16
    assert tuple(blind.world.base_fine_frac) == (0.0, 0.6)

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            out.update(flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
        return out

    a, b = flat(base), flat(blind)
    assert {k for k in a if a[k] != b[k]} == {
        "sampling.max_new_tokens",
        "world.base_fine_frac",
        "ppo.kl_beta",
    }
    assert blind.ppo.kl_beta == 0.01
    config_lib.validate(blind)
    with pytest.raises(ConfigError, match="world='bogus'; expected one of exploit, blind"):
        config_lib.load_config_file("configs/quickstart.py:world=bogus")
