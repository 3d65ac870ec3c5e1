"""Every config error before any work: the values of every block (config_lib.validate), the
checks each stage registers (stages.VALIDATORS), a config file's own arguments (one parser), and
the real command line: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import ml_collections
import pytest

from metarm_jax.config import defaults, stages
from metarm_jax.config import lib as config_lib
from metarm_jax.config import rules as config_rules
from metarm_jax.runtime.errors import ConfigError
from tests.conftest import REPO
from tests.xla_env import xla_flags

QUICKSTART = str(REPO / "configs" / "quickstart.py")


def _quickstart() -> ml_collections.ConfigDict:
    return config_lib.load_config_file(QUICKSTART)


def _with(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    """A copy with ``{"block__key": value}`` set without ConfigDict's type checks (so that a
    value of the wrong type, as a config file could build, reaches validate)."""
    d = config.to_dict()
    for name, value in values.items():
        block, key = name.split("__") if "__" in name else (None, name)
        (d[block] if block else d)[key] = value
    return ml_collections.ConfigDict(d)


def _error(config) -> str:
    with pytest.raises(ConfigError) as e:
        config_lib.validate(config)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# The command line


def _cli(*args, cwd=REPO) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "metarm_jax.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


USER_CONFIG = """
from metarm_jax.config import lib as config_lib


def get_config():
    c = config_lib.base_config()
    c.pipeline = ("inspect",)
    c.inspect.seq_len = 0  # a bad value of a config file outside the repository
    return c
"""

QS = "--config=configs/quickstart.py"
# (arguments, the start of the one line on stderr[, run in tmp_path instead of the repository]);
# {repo}: the repository.
BAD = [
    ([QS, "--config.meta.order=third"], "error: config.meta.order='third': expected one of"),
    ([QS, "--config.data.pad_side=middle"], "error: config.data.pad_side='middle': expected one"),
    ([QS, "--config.sampling.top_p=7"], "error: config.sampling.top_p=7.0: expected a number in"),
    ([QS, "--config.rlhf.rm_init=bogus"], "error: config.rlhf.rm_init='bogus'; expected"),
    ([QS, "--config.train.lr=-5"], "error: config.train.lr=-5.0: expected a number >= 0"),
    ([QS, "--config.rlhf.judge=bogus"], "error: config.rlhf.judge='bogus': expected one of"),
    ([QS + ":bogus=1"], "error: configs/quickstart.py: unknown argument 'bogus'; the arguments"),
    # the flag parser reads this as one string: two stages, the second unknown
    ([QS, "--config.pipeline=inspect,nope"], "error: config.pipeline: unknown stage(s) ['nope']"),
    # a shipped config that imports another, run from another folder
    (["--config={repo}/configs/tldr.py:runlocal", "--config.nope=1"], "error: --config.nope:", 1),
]


def test_every_config_error_is_one_line_exit_2_and_writes_nothing(tmp_path):
    """The issue's bad values (and a few more) through ``python -m metarm_jax.main``: each stops
    with exactly one line on stderr and exit code 2, and no workdir or stage folder appears.
    One process per case (absl's flags are global), four at a time: the cost is the imports
    (about 3 s of CPU each; validation runs before JAX starts its backend). The other errors are
    checked in process below."""
    cases = []
    for i, (args, want, *elsewhere) in enumerate(BAD):
        workdir = tmp_path / f"run{i}"
        args = [a.format(repo=REPO) for a in args] + [f"--workdir={workdir}"]
        cases.append((args, want, workdir, tmp_path if elsewhere else REPO))
    t0, running, done = time.monotonic(), [], []
    try:
        while cases or running:
            while cases and len(running) < 4:  # at most 4 at once (memory: ~0.4 GB each)
                args, want, workdir, cwd = cases.pop(0)
                running.append((args, want, workdir, _cli(*args, cwd=cwd)))
            args, want, workdir, proc = running.pop(0)
            out, err = proc.communicate(timeout=300)
            done.append(proc)
            lines = err.strip().splitlines()
            assert proc.returncode == 2, (args, proc.returncode, err[-2000:])
            assert len(lines) == 1 and lines[0].startswith(want), (args, err[-2000:])
            assert not workdir.exists(), (args, sorted(os.listdir(workdir)))
            assert "== stage" not in out, (args, out[-500:])
    finally:
        for *_, proc in running:  # a failed case: stop the others
            proc.kill()
            proc.communicate()
    print(f"{len(done)} processes in {time.monotonic() - t0:.1f} s")


def test_help_needs_no_config_and_lists_the_configs(capsys):
    """``--help`` (main's flag parser, in process: it answers before any flag is defined)."""
    from metarm_jax import main

    with pytest.raises(SystemExit) as e:
        main._parse_flags(["main", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for name in ("quickstart", "hh_rlhf", "tldr", "ood"):
        assert f"configs/{name}.py" in out, out
    assert "seeds=<int>, fast[=0|1], study[=0|1], ood[=0|1]" in out
    assert "metarm_jax/config/defaults.py" in out and "'Configuration' section" in out
    assert "inspect, rm, metarm, build_meta, sft, dpo, ppo, rlhf" in out
    for argv in (["main"], ["main", QS, QS]):
        with pytest.raises(SystemExit) as e:
            main._parse_flags(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(
            "error: --config=configs/X.py[:arg] is required"
        )
        assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The configs: one argument parser


def test_the_argument_parser():
    accepted = {"seeds": int, "fast": bool, "lr": float, "name": str}
    parse = lambda arg: config_lib.parse_config_args(arg, accepted, "my.py")
    assert parse(None) == parse("") == {}
    assert parse("seeds=3,fast") == {"seeds": 3, "fast": True}
    assert parse("fast=0, lr=1e-3,name=a b") == {"fast": False, "lr": 1e-3, "name": "a b"}
    assert parse("fast=true") == parse("fast=1") == parse("fast=yes") == {"fast": True}
    usage = "the arguments of my.py are: seeds=<int>, fast[=0|1], lr=<float>, name=<str>."
    for arg, start in (
        ("bogus=1", "my.py: unknown argument 'bogus'; "),
        ("seed=3", "my.py: unknown argument 'seed' (did you mean 'seeds'?); "),
        ("seeds", "my.py: argument 'seeds' needs a value; "),
        ("seeds=three", "my.py: argument seeds='three' is not a int; "),
        ("fast=maybe", "my.py: argument fast='maybe' is not 0 or 1; "),
        ("fast,fast=0", "my.py: argument 'fast' is given twice; "),
    ):
        with pytest.raises(ConfigError) as e:
            parse(arg)
        assert str(e.value) == start + usage


@pytest.mark.parametrize(
    "spec,check",
    [
        ("quickstart.py", lambda c: c.seeds == 1 and c.rlhf.baselines[0] == "eta0"),
        ("quickstart.py:seeds=3,fast", lambda c: c.seeds == 3 and c.ppo.iterations == 3),
        ("quickstart.py:study=1", lambda c: c.seeds == 5 and "oracle" in c.rlhf.baselines),
        ("quickstart.py:study,seeds=2", lambda c: c.seeds == 2),
        ("quickstart.py:ood=1", lambda c: c.rlhf.meta_prompts == "ood"),
        ("hh_rlhf.py", lambda c: c.model.preset == "llama2_7b" and c.rlhf.rounds == 4),
        ("hh_rlhf.py:runlocal", lambda c: c.model.preset == "tiny" and c.rlhf.rounds == 2),
        ("tldr.py", lambda c: c.data.dataset == "summarize_from_feedback" and c.rlhf.rounds == 5),
        ("tldr.py:runlocal", lambda c: c.model.preset == "tiny" and c.data.path == ""),
        ("ood.py", lambda c: c.rlhf.ood_prompt_dataset == "oasst1"),
        ("ood.py:harmless,runlocal", lambda c: c.rlhf.ood_prompt_dataset == "pku_saferlhf"),
    ],
)
def test_the_shipped_configs_and_their_arguments(spec, check):
    config = config_lib.load_config_file(str(REPO / "configs" / spec))
    assert check(config)
    if spec == "ood.py:harmless,runlocal":  # no OOD sample ships: the path is given by flag
        assert _error(config).startswith("config.rlhf.meta_prompts='ood' needs")
        config.rlhf.ood_prompt_path = "/data/PKU-SafeRLHF"
    config_lib.validate(config)


def test_a_config_files_own_errors_are_one_line():
    for spec, message in (
        ("hh_rlhf.py:runlocal,smol", "configs/hh_rlhf.py: give runlocal or smol, not both."),
        ("ood.py:helpful,harmless", "configs/ood.py: give helpful or harmless, not both."),
        ("tldr.py:runlocal=2", "configs/tldr.py: argument runlocal='2' is not 0 or 1; the"),
    ):
        with pytest.raises(ConfigError) as e:
            config_lib.load_config_file(str(REPO / "configs" / spec))
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_config_file_anywhere(tmp_path):
    (tmp_path / "plain.py").write_text("def get_config():\n    return {'seed': 3}\n")
    assert config_lib.load_config_file(str(tmp_path / "plain.py")).seed == 3
    with pytest.raises(ConfigError, match=r"get_config\(\) takes no argument; drop ':x'"):
        config_lib.load_config_file(f"{tmp_path / 'plain.py'}:x")
    (tmp_path / "bad.py").write_text("def get_config():\n    return 3\n")
    with pytest.raises(ConfigError, match="returned int, not a ConfigDict"):
        config_lib.load_config_file(str(tmp_path / "bad.py"))
    # a package of the user's own: its files import each other as the shipped configs do
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(USER_CONFIG)
    (pkg / "child.py").write_text(
        "from mine import base\n\n\ndef get_config():\n    c = base.get_config()\n"
        "    c.inspect.seq_len = 16\n    return c\n"
    )
    config = config_lib.load_config_file(str(pkg / "child.py"))
    assert config.inspect.seq_len == 16
    config_lib.validate(config)


def test_the_pipeline_is_split_at_commas():
    assert config_lib.pipeline_stages(("inspect,sft",)) == ("inspect", "sft")
    assert config_lib.pipeline_stages("rm, ppo") == ("rm", "ppo")
    assert config_lib.pipeline_stages(("inspect", "sft")) == ("inspect", "sft")


# ---------------------------------------------------------------------------------------------
# The values


def test_the_defaults_and_every_shipped_config_pass():
    config_lib.validate(config_lib.base_config(), 8)
    config_lib.validate(_quickstart(), 2)
    config_lib.validate(config_lib.load_config_file(str(REPO / "configs/hh_rlhf.py:runlocal")), 2)


def test_every_rule_names_a_key_and_rejects_a_value_of_another_type():
    base = config_lib.base_config()
    for block, rules in config_rules.RULES.items():
        for key, rule in rules.items():
            assert key in base[block], f"{block}.{key}: a rule for a key no code reads"
            assert rule.ok(base[block][key]), f"{block}.{key}: its default breaks its rule"
            if (block, key) == ("data", "num_epochs"):
                continue  # None: repeat forever
            message = _error(_with(base, **{f"{block}__{key}": None}))
            assert message.startswith(f"config.{block}.{key}=None: expected "), message


def test_every_option_of_every_enum_passes():
    """The rules refuse nothing the code accepts: each value of each enum validates."""
    config = _quickstart()
    for block, rules in config_rules.RULES.items():
        for key, rule in rules.items():
            for option in rule.options:
                if (block, key, option) not in (
                    ("rlhf", "judge", "llm"),  # needs an endpoint: below
                    ("meta", "direction", "descent"),  # only as its plan arm: below
                ):
                    config_lib.validate(_with(config, **{f"{block}__{key}": option}))
    judge = {"judge__base_url": "http://x/v1", "judge__model": "m", "judge__api_key_env": ""}
    config_lib.validate(_with(config, rlhf__judge="llm", **judge))
    with pytest.raises(ConfigError, match="add metarm_descent to config.rlhf.baselines"):
        config_lib.validate(_with(config, meta__direction="descent"))
    config_lib.validate(_with(config, rlhf__baselines=("metarm_descent",)))


@pytest.mark.parametrize(
    "values,message",
    [
        ({"meta__k": 1}, "config.meta.k=1: expected an integer >= 2 (the difference loss J"),
        ({"meta__k": 2.0}, "config.meta.k=2.0: expected an integer >= 2 ("),
        ({"meta__k": "5"}, "config.meta.k='5': expected an integer >= 2 ("),
        ({"meta__eta_mode": "relative"}, "config.meta.eta_mode='relative': expected one of"),
        ({"meta__second_order": "fd"}, "config.meta.second_order='fd': expected one of"),
        ({"sampling__temperature": -0.1}, "config.sampling.temperature=-0.1: expected a number >= 0"),
        ({"sampling__repetition_penalty": 0.0}, "config.sampling.repetition_penalty=0.0: expected a number > 0"),
        ({"sampling__top_p": 0.0}, "config.sampling.top_p=0.0: expected a number in (0, 1]"),
        ({"sampling__min_new_tokens": 30}, "config.sampling.min_new_tokens=30 is above sampling.max_new_tokens=20."),
        ({"train__schedule": "step"}, "config.train.schedule='step': expected one of 'constant'"),
        ({"train__optimizer": "lion"}, "config.train.optimizer='lion': expected one of"),
        ({"train__warmup": -1.0}, "config.train.warmup=-1.0: expected a number >= 0"),
        ({"train__grad_accum": 0}, "config.train.grad_accum=0: expected an integer >= 1"),
        ({"sft__lr": -1.0}, "config.sft.lr=-1.0: expected a number >= 0"),
        ({"dpo__init": "rm"}, "config.dpo.init='rm': expected one of 'model', 'sft'"),
        ({"dpo__ref_dtype": "fp8"}, "config.dpo.ref_dtype='fp8': expected '' or one of"),
        ({"ppo__reward_norm": "zscore"}, "config.ppo.reward_norm='zscore': expected one of"),
        ({"ppo__kl_estimator": "k4"}, "config.ppo.kl_estimator='k4': expected one of"),
        ({"ppo__reward_clip": -1.0}, "config.ppo.reward_clip=-1.0: expected a number >= 0 (0 switches"),
        ({"ppo__minibatch_size": 48}, "config.ppo.minibatch_size=48 must divide the roll-out buffer"),
        ({"ppo__rollouts_per_query": 1}, "config.ppo.rollouts_per_query=1: expected an integer >= 2"),
        ({"ppo__monitor": "no_such_module_xyz:f"}, "config.ppo.monitor='no_such_module_xyz:f': cannot import"),
        ({"build_meta__k": 0}, "config.build_meta.k=0: expected an integer >= 1"),
        ({"build_meta__skip_prompts": -1}, "config.build_meta.skip_prompts=-1: expected an integer >= 0"),
        ({"data__on_bad_record": "warn"}, "config.data.on_bad_record='warn': expected one of"),
        ({"data__max_skip_fraction": 1.5}, "config.data.max_skip_fraction=1.5: expected a number in [0, 1]"),
        ({"data__conversation_format": "chatml"}, "config.data.conversation_format='chatml'"),
        ({"distributed__mode": "yes"}, "config.distributed.mode='yes': expected one of 'auto'"),
        ({"model__remat": "some"}, "config.model.remat='some': expected one of"),
        ({"inspect__head": "policy"}, "config.inspect.head='policy': expected one of"),
        ({"rlhf__diversity": "bleu"}, "config.rlhf.diversity='bleu': expected one of"),
        ({"rlhf__tie_margin": -0.1}, "config.rlhf.tie_margin=-0.1: expected a number >= 0"),
        ({"world__num_groups": 5}, "config.world.num_symbols=48 must be a multiple of world.num_groups=5"),
        ({"world__topic_purity": 1.5}, "config.world.topic_purity=1.5: expected a number in [0, 1]"),
        ({"ppo__reward_models": ("/rm",)}, "config.ppo.reward_models=('/rm',): expected () or a tuple of at least 2"),
        ({"ppo__ensemble_agg": "max"}, "config.ppo.ensemble_agg='max': expected one of 'mean', 'min', 'uwo'"),
        ({"ppo__ensemble_lambda": -1.0}, "config.ppo.ensemble_lambda=-1.0: expected a number >= 0"),
        ({"ppo__reward_models": ("/a", "/b"), "ppo__reward_fn": "metarm_jax.data.synthetic:gold_monitor"}, "config.ppo.reward_fn and ppo.reward_models both"),
        ({"train__center_rewards": -0.1}, "config.train.center_rewards=-0.1: expected a number >= 0"),
        ({"rlhf__ensemble_size": 1}, "config.rlhf.ensemble_size=1: expected an integer >= 2"),
        ({"warm__rm_paths": ("",)}, "config.warm.rm_paths=('',): expected () or a tuple of at least 2"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_errors(values, message):
    assert _error(_with(_quickstart(), **values)).startswith(message)


@pytest.mark.parametrize(
    "pipeline,values,message",
    [
        (("ppo",), {}, "config.ppo.rm_path is empty: PPO needs a reward model"),
        (("build_meta", "metarm"), {}, "the metarm stage needs meta examples"),
        (("rlhf",), {"rlhf__rounds": 0}, "config.rlhf.rounds=0: at least one round."),
        (("rlhf",), {"rlhf__meta_prompts": "test"}, "config.rlhf.meta_prompts='test'; expected"),
        (("rlhf",), {"rlhf__baselines": ("eta1",)}, "config.rlhf.baselines: unknown ['eta1']"),
        (("rlhf",), {"rlhf__world": False, "rlhf__baselines": ("oracle",)}, "config.rlhf.baselines: 'oracle' needs"),
        (("rlhf",), {"rlhf__eval_k": 1}, "config.rlhf: valid_prompts=100 and eval_prompts=100 must be"),
        (("rlhf",), {"rlhf__world": False, "rlhf__meta_prompts": "ood"}, "config.rlhf.meta_prompts='ood' needs"),
        (("rlhf",), {"rlhf__world": False, "rlhf__valid_prompt_split": "test"}, "config.rlhf.valid_prompt_split='test' is the test split"),
        (("rlhf",), {"rlhf__judge_rm_path": "/no/such/rm"}, "config.rlhf.judge_rm_path='/no/such/rm': no HF checkpoint"),
        (("rlhf",), {"rlhf__human_verdicts": "/no/such.csv"}, "config.rlhf.human_verdicts='/no/such.csv': no such file"),
        (("rlhf",), {"rlhf__sft": False}, "config.rlhf.sft=False needs config.model.hf_path"),
        (("rlhf",), {"rlhf__judge": "gold", "rlhf__world": False}, "config.rlhf.judge='gold' needs"),
        (("ppo",), {"ppo__rm_path": "/r", "ppo__reward_models": ("/no/a", "/no/b")}, "config.ppo.reward_models[0]='/no/a': no HF checkpoint"),
        (("warm",), {"warm__rm_paths": ()}, "config.warm.rm_paths=(): the warm stage averages at least 2"),
    ],
)  # fmt: skip
def test_the_stages_own_checks_run_before_any_stage(pipeline, values, message):
    """What a stage needs from the rest of the config (stages.VALIDATORS and the rlhf inputs):
    checked for the stages of the pipeline only (rlhf sets ppo.rm_path for its own PPO)."""
    config = _with(_quickstart(), pipeline=pipeline, **values)
    assert _error(config).startswith(message)
    config_lib.validate(_with(config, pipeline=("inspect",)))


def test_the_ood_setting_in_the_synthetic_world_needs_no_path():
    """The world writes its own OOD prompts: rlhf.meta_prompts='ood' passes without a path."""
    config_lib.validate(config_lib.load_config_file(QUICKSTART + ":ood=1"))


def test_the_stage_registry():
    for name in stages.VALIDATORS:
        assert name in stages.STAGES
        assert all(callable(f) for f in stages.validators(name))
    assert len(stages.validators("rlhf")) == 2 and stages.validators("inspect") == []


def test_resolve_is_the_defaults_resolve():
    assert config_lib.resolve is defaults.resolve
    c = config_lib.resolve(config_lib.base_config(), "runs/x")
    assert c.build_meta.output_path == "runs/x/meta.jsonl" and c.ppo.seed == 0
