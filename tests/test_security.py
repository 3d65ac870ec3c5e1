"""Security pass: no unsafe deserialisation or code execution in the package (a scan that fails
on a new one), safetensors only, secrets only from the environment and never written, the one
place that imports user code, and paths with spaces, unicode and symlinks, with nothing written
outside the workdir."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

from metarm_jax.config import defaults
from metarm_jax.data.world_files import write_world
from metarm_jax.runtime.errors import ConfigError, UserError
from tests.conftest import REPO
from tests.xla_env import xla_flags

PACKAGE = REPO / "metarm_jax"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
# The places that import code by name, each reviewed: the stage registry (fixed strings in
# stages.STAGES), the data layer's lazy exports (fixed names of its own modules), the package's
# old root names (a fixed table of its own modules) and ppo.monitor ("module:function" from the
# user's config: the one place user code is imported, docs/ppo.md).
IMPORT_BY_NAME = {
    "metarm_jax/__init__.py",  # _MOVED: the modules that left the root, by their fixed names
    "metarm_jax/config/stages.py",  # the stage registry and stages.load_function (ppo.monitor)
    "metarm_jax/data/__init__.py",
    "metarm_jax/config/lib.py",  # a config file inside a package (configs/) is imported as such
}


def findings(root: pathlib.Path) -> list[str]:
    """Unsafe constructs in every .py file under root, as 'file:line: what'."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for n in names:
                    if n.split(".")[0] in UNSAFE_MODULES:
                        out.append(f"{where}: imports {n}")
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            owner = (
                f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            )
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(f, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                out.append(f"{where}: {name}()")
            if name == "load" and owner == "torch":
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    out.append(f"{where}: torch.load without weights_only=True")
            if name == "load" and owner == "yaml":
                out.append(f"{where}: yaml.load")
            t = kw.get("trust_remote_code")
            if t is not None and not (isinstance(t, ast.Constant) and t.value is False):
                out.append(f"{where}: trust_remote_code")
            s = kw.get("shell")
            if s is not None and not (isinstance(s, ast.Constant) and s.value is False):
                out.append(f"{where}: subprocess with shell=True")
            if name == "system" and owner == "os":
                out.append(f"{where}: os.system")
            if name == "import_module" and rel not in IMPORT_BY_NAME:
                out.append(f"{where}: import_module outside the reviewed places")
    return out


def test_no_unsafe_construct_in_the_package():
    found = findings(PACKAGE)
    assert not found, "unsafe constructs:\n" + "\n".join(found)


def test_the_scan_catches_each_kind(tmp_path):
    pkg = tmp_path / "metarm_jax"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle\nimport torch, yaml, os, importlib\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\neval('1')\n"
        "yaml.load('a')\nos.system('ls')\nimportlib.import_module('m')\n"
        "import subprocess\nsubprocess.run('ls', shell=True)\n"
        "from transformers import AutoModel\nAutoModel.from_pretrained('x', trust_remote_code=True)\n"
    )
    kinds = [f.split(": ", 1)[1] for f in findings(pkg)]
    assert kinds == [
        "imports pickle", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "eval()", "yaml.load", "os.system",
        "import_module outside the reviewed places", "subprocess with shell=True",
        "trust_remote_code",
    ]  # fmt: skip


def test_checkpoints_are_safetensors_only(tmp_path):
    from metarm_jax.models import hf, llama

    d = tmp_path / "ckpt"
    hf.save_hf(llama.create(llama.preset("tiny"), "lm", seed=0), str(d))
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        hf.load_hf(str(d), "lm")


def test_the_user_code_hook_is_module_colon_function():
    import ml_collections

    from metarm_jax.train import rollout

    cfg = ml_collections.ConfigDict({"ppo": {"monitor": "no_such_module_xyz:f"}})
    with pytest.raises(ConfigError, match="'package.module:function'"):
        rollout.load_token_fn(cfg, "monitor")
    cfg.ppo.monitor = "metarm_jax.data.synthetic:no_such_function"
    with pytest.raises(ConfigError, match="cannot load it"):
        rollout.load_token_fn(cfg, "monitor")
    doc = (REPO / "docs" / "ppo.md").read_text()
    assert "the one place" in doc and "imports user code" in doc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    cfg = defaults.world()
    cfg.update(num_sft=32, num_train_pairs=128, num_test_pairs=32, num_train_prompts=16,
               num_eval_prompts=8, num_valid_prompts=8, num_ood_prompts=8,
               num_ood_train_prompts=8)  # fmt: skip
    write_world(str(root / "w"), cfg)
    return root / "w"


def test_odd_paths_work_a_secret_is_never_written_and_nothing_outside_is(world, tmp_path):
    """The RM stage with its workdir and data behind spaces, unicode and a symlink, an API key
    in the environment (named by judge.api_key_env) and HOME in an empty folder: the run works,
    the key appears in no file it wrote, and it wrote nothing outside its workdir."""
    secret = "sk-test-NEVER-WRITE-ME-0123456789"
    outside = tmp_path / "outside"
    home = outside / "home"
    home.mkdir(parents=True)
    data = tmp_path / "dätä with space"
    data.mkdir()
    (data / "pairs link").symlink_to(world / "pairs", target_is_directory=True)
    workdir = tmp_path / "wörk dir" / "run ü"
    before = set(tmp_path.rglob("*"))
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1), HOME=str(home),
        MY_JUDGE_KEY=secret, OPENAI_API_KEY=secret,
    )  # fmt: skip
    res = subprocess.run(
        [
            sys.executable, "-m", "metarm_jax.main", "--config=configs/quickstart.py:fast=1",
            "--config.pipeline=('rm',)", f"--workdir={workdir}",
            f"--config.data.tokenizer_path={world / 'tokenizer'}",
            f"--config.data.path={data / 'pairs link'}", "--config.data.split=train",
            "--config.data.eval_split=test", "--config.train.steps=4",
            "--config.train.progress=False", "--config.judge.api_key_env=MY_JUDGE_KEY",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (workdir / "export" / "rm" / "model.safetensors").exists()
    # The RM export carries its tokenizer and scoring convention (README, "Using the reward model").
    assert (workdir / "export" / "rm" / "tokenizer.json").exists()
    rm_config = json.loads((workdir / "export" / "rm" / "config.json").read_text())
    assert rm_config["metarm_scoring"]["eos_token"] == "</s>"  # the world's BPE tokenizer
    assert (workdir / "export" / "rm" / "README.md").exists()
    assert secret not in res.stdout and secret not in res.stderr
    written = [p for p in workdir.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert secret.encode() not in p.read_bytes(), p
    config = (workdir / "config.json").read_text()
    assert '"api_key_env": "MY_JUDGE_KEY"' in config  # the NAME of the variable, not its value
    new_outside = sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p not in before and not str(p).startswith(str(tmp_path / "wörk dir"))
    )
    assert new_outside == [], new_outside
