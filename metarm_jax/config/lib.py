"""The one config system: ml_collections ConfigDicts built by ``configs/*.py:get_config(arg)``.

``base_config()`` holds every key the code reads; the defaults live in ``metarm_jax/config/defaults.py``
(one function per block). Config files start from it and change what they need, and read their
own arguments with ``parse_config_args`` (one parser for every file; ``load_config_file`` imports
a file of the ``configs`` package as a module of it); ``--config.a.b=v`` overrides any key, and an
unknown or removed key is an error. ``resolve`` (``defaults.resolve``) fills every "inherit" value
(``ppo.seed=-1``, ``ppo.policy_path=''``, ...) once, before any stage runs. ``validate`` checks
every value once, before any stage runs: each key's allowed values (``config_rules.RULES``), the
checks across keys, and those each stage of the pipeline registers (``stages.VALIDATORS``);
``check_devices`` checks the mesh and the batch sizes against the machine.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

from metarm_jax import sharding
from metarm_jax.config import defaults, stages
from metarm_jax.config.rules import RULES, is_int
from metarm_jax.data import synthetic
from metarm_jax.models import llama
from metarm_jax.runtime.errors import ConfigError

# The one resolution of "inherit" values lives beside the defaults (stages resolve every config).
resolve = defaults.resolve


def base_config() -> ml_collections.ConfigDict:
    """Every key the code reads, with its default (``metarm_jax/config/defaults.py``, one block each)."""
    c = ml_collections.ConfigDict()
    c.pipeline = ("inspect",)  # stages to run in order; see metarm_jax/config/stages.py
    c.seed = 0
    c.seeds = 1  # >1: run the whole pipeline once per seed (seed, seed+1, ...)
    c.workdir = ""  # set by --workdir (default runs/<config name>)
    for block in BLOCKS:
        c[block] = getattr(defaults, block)()
    return c


# The config blocks, in the order they are printed; each is ``defaults.<block>()``.
BLOCKS = (
    "mesh",
    "distributed",
    "model",
    "data",
    "train",
    "meta",
    "sampling",
    "build_meta",
    "sft",
    "dpo",
    "ppo",
    "rlhf",
    "judge",
    "rm_eval",
    "warm",
    "world",
    "inspect",
)

# Keys that existed once, with what to use instead (an old config or flag gets this message).
REMOVED_KEYS = {
    "data.meta_k": "use meta.k, the one key for the responses per meta prompt",
    "sampling.num_samples": (
        "it was always overwritten; the samples per prompt are build_meta.k (meta data) and "
        "ppo.rollouts_per_query (roll-outs)"
    ),
}


# ---------------------------------------------------------------------------------------------
# Loading config files

# The shipped configs: the package ``configs`` beside ``metarm_jax`` in a checkout.
# the repository's configs/ (metarm_jax/config/lib.py -> the checkout's root)
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)


def _import_file(path: str) -> types.ModuleType:
    """The module of a config file. A file inside a package (a folder with ``__init__.py``, as
    ``configs/``) is imported as a module of that package, so that it can import its siblings
    (``from configs import hh_rlhf``); any other file is loaded on its own."""
    path = os.path.abspath(path)
    root, file = os.path.split(path)
    parts = [os.path.splitext(file)[0]]
    while os.path.isfile(os.path.join(root, "__init__.py")):
        root, package = os.path.split(root)
        parts.insert(0, package)
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        spec = importlib.util.spec_from_file_location("_metarm_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if not any(os.path.realpath(p or os.curdir) == os.path.realpath(root) for p in sys.path):
        sys.path.append(root)
    name = ".".join(parts)
    module = importlib.import_module(name)
    if os.path.realpath(getattr(module, "__file__", "") or "") != os.path.realpath(path):
        raise ConfigError(
            f"--config={path}: importing it as {name!r} finds {module.__file__} instead (another "
            f"package {parts[0]!r} comes first on sys.path); rename one of them."
        )
    return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path/to/config.py[:arg]`` -> ``get_config(arg)`` (``get_config()`` without an arg).

    An error of the file's arguments (``ConfigError``, e.g. from ``parse_config_args``) stays one
    line; any other exception of the file is its own bug and keeps its traceback."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--config={spec}: file {path!r} not found (configs live in configs/*.py)."
        )
    module = _import_file(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{path}: no get_config(arg) function.")
    if arg:
        try:
            inspect.signature(get_config).bind(arg)
        except TypeError:
            raise ConfigError(
                f"--config={spec}: {path}'s get_config() takes no argument; drop ':{arg}'."
            ) from None
        config = get_config(arg)
    else:
        config = get_config()
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned {type(config).__name__}, not a ConfigDict (start "
            "from metarm_jax.config.lib.base_config())."
        )
    return config


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def config_args_usage(accepted: Mapping[str, type]) -> str:
    """``seeds=<int>, fast[=0|1]``: the arguments a config file declares, as typed."""
    return ", ".join(
        f"{name}[=0|1]" if kind is bool else f"{name}=<{kind.__name__}>"
        for name, kind in accepted.items()
    )


def parse_config_args(arg: str | None, accepted: Mapping[str, type], where: str) -> dict[str, Any]:
    """The argument of ``--config=path.py:arg``, parsed against the arguments a config file
    declares (``{name: bool | int | float | str}``): ``a=1,b=x`` sets values; a bare word sets a
    bool argument to True (``runlocal`` is ``runlocal=1``). Returns the arguments given (the file
    applies its own defaults); anything else is a ConfigError of one line that names ``where``
    (the file) and lists the accepted arguments."""
    usage = f"the arguments of {where} are: {config_args_usage(accepted) or '(none)'}"
    out: dict[str, Any] = {}
    for item in (arg or "").split(","):
        name, eq, text = (part.strip() for part in item.partition("="))
        if not name and not eq:
            continue
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown argument {_show(name)!r}{hint}; {usage}.")
        if name in out:
            raise ConfigError(f"{where}: argument {name!r} is given twice; {usage}.")
        kind = accepted[name]
        if not eq:
            if kind is not bool:
                raise ConfigError(f"{where}: argument {name!r} needs a value; {usage}.")
            out[name] = True
            continue
        try:
            if kind is bool:
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError
                out[name] = text.lower() in _TRUE
            else:
                out[name] = kind(text)
        except ValueError:
            what = "0 or 1" if kind is bool else f"a {kind.__name__}"
            raise ConfigError(
                f"{where}: argument {name}={_show(text)!r} is not {what}; {usage}."
            ) from None
    return out


def shipped_configs() -> list[tuple[str, str, str]]:
    """(path, first sentence of its docstring, its arguments) of every config in ``configs/``."""
    out = []
    if not os.path.isdir(CONFIG_DIR):
        return out
    for file in sorted(os.listdir(CONFIG_DIR)):
        if not file.endswith(".py") or file.startswith("_"):
            continue
        path = os.path.join(CONFIG_DIR, file)
        module = _import_file(path)
        first = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        first = first.split(". ")[0].rstrip(".") + "." if first else ""
        out.append((path, first, config_args_usage(getattr(module, "ARGS", {}))))
    return out


def pipeline_stages(pipeline) -> tuple:
    """``config.pipeline`` as a tuple of stage names: ``--config.pipeline=inspect,sft`` (which the
    flag parser reads as one string) is split at the commas."""
    if isinstance(pipeline, str):
        pipeline = (pipeline,)
    out = []
    for entry in pipeline:
        if isinstance(entry, str):
            out.extend(s.strip() for s in entry.split(",") if s.strip())
        else:
            out.append(entry)
    return tuple(out)


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    for k, v in config.items():
        key = f"{prefix}{k}"
        yield key
        if isinstance(v, ml_collections.ConfigDict):
            yield from flat_keys(v, key + ".")


def _show(key: str) -> str:
    """A key as typed, with control characters escaped (the message stays on one line)."""
    return key.encode("unicode_escape").decode("ascii")


def _removed(key: str) -> ConfigError:
    return ConfigError(f"config.{key} was removed: {REMOVED_KEYS[key]}.")


def check_override_keys(config: ml_collections.ConfigDict, keys: list[str]) -> None:
    """Every ``--config.KEY=`` must name an existing key (a typo must not be silently ignored)."""
    known = set(flat_keys(config))
    for key in keys:
        if key in known:
            continue
        if key in REMOVED_KEYS:
            raise _removed(key)
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" Did you mean --config.{close[0]}?" if close else ""
        where = f"under {_show(parent)!r}" if parent else "at the top level"
        raise ConfigError(
            f"--config.{_show(key)}: unknown config key.{hint} Keys {where}: "
            f"{', '.join(s.rpartition('.')[2] for s in siblings) or '(none)'}."
        )


def check_known_keys(config: ml_collections.ConfigDict) -> None:
    """A config file may only set keys of ``base_config()``: one it adds (a typo, or a removed
    key such as ``data.meta_k``) would otherwise be ignored without a word."""
    known = set(flat_keys(base_config()))
    for key in flat_keys(config):
        if key in known:
            continue
        if key in REMOVED_KEYS:
            raise _removed(key)
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" Did you mean config.{close[0]}?" if close else ""
        raise ConfigError(
            f"config.{_show(key)}: the config file sets a key that no code reads.{hint} Every key is "
            "listed in metarm_jax/config/defaults.py."
        )


def derive(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """An unlocked copy of config with ``{"a.b.c": value}`` overrides; every key must exist."""
    out = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"internal override of unknown config key {key!r}.")
        node[leaf] = value
    return out


def with_seed_offset(config: ml_collections.ConfigDict, offset: int) -> ml_collections.ConfigDict:
    """A copy of config with every seed (``seed`` and ``*_seed`` keys, anywhere) moved by offset,
    run in ``<workdir>/seed<offset>``."""
    out = derive(config, {"workdir": os.path.join(config.workdir, f"seed{offset}")})

    def shift(node):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                shift(value)
            elif (key == "seed" or key.endswith("_seed")) and isinstance(value, int) and value >= 0:
                node[key] = value + offset

    shift(out)
    return out


def seed_offset_flags(config: ml_collections.ConfigDict, offset: int) -> list[str]:
    """The ``--config.KEY=VALUE`` flags that make ``config`` into its seed ``offset`` (every seed
    key ``with_seed_offset`` moves), for running one seed of ``:seeds=N`` as its own process."""
    moved = with_seed_offset(derive(config, {"workdir": "x"}), offset)
    out = []
    for key in flat_keys(config):
        leaf = key.rpartition(".")[2]
        if leaf == "seed" or leaf.endswith("_seed"):
            was, now = config, moved
            for part in key.split("."):
                was, now = was[part], now[part]
            if was != now:
                out.append(f"--config.{key}={now}")
    return out


# ---------------------------------------------------------------------------------------------
# Validation: every value of the config, once, before any stage runs (the allowed values of each
# key: config_rules.RULES).


def _fail_value(key: str, value, expect: str) -> ConfigError:
    shown = _show(repr(value))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(f"config.{key}={shown}: expected {expect}.")


def _check_rules(config) -> None:
    for block, rules in RULES.items():
        if block not in config:
            continue
        for key, rule in rules.items():
            if key in config[block] and not rule.ok(config[block][key]):
                raise _fail_value(f"{block}.{key}", config[block][key], rule.expect)


def _check_model(m) -> None:
    if m.hf_path:
        if not isinstance(m.hf_path, str) or not os.path.isdir(m.hf_path):
            raise ConfigError(
                f"config.model.hf_path={m.hf_path!r}: no such directory; point it at a "
                "local HF checkpoint (config.json + *.safetensors)."
            )
        if not os.path.isfile(os.path.join(m.hf_path, "config.json")):
            raise ConfigError(f"config.model.hf_path={m.hf_path!r}: no config.json in it.")
    elif not isinstance(m.preset, str) or m.preset not in llama.PRESETS:
        raise ConfigError(
            f"config.model.preset={m.preset!r}: unknown preset; expected one of "
            f"{sorted(llama.PRESETS)} (or set config.model.hf_path)."
        )


def _check_across_keys(config) -> None:
    """The checks that relate two keys (each key's own value is already checked)."""
    if "sampling" in config:
        s = config.sampling
        if s.min_new_tokens > s.max_new_tokens:
            raise ConfigError(
                f"config.sampling.min_new_tokens={s.min_new_tokens} is above "
                f"sampling.max_new_tokens={s.max_new_tokens}."
            )
    if "ppo" in config:
        p = config.ppo
        n = p.queries_per_iteration * p.rollouts_per_query
        if n % p.minibatch_size:
            raise ConfigError(
                f"config.ppo.minibatch_size={p.minibatch_size} must divide the roll-out "
                f"buffer of ppo.queries_per_iteration x ppo.rollouts_per_query = {n} rows."
            )
        for key in ("monitor", "reward_fn"):
            if p[key]:
                stages.load_function(p[key], f"ppo.{key}")
        if p.reward_shaping == "par" and (p.reward_fn or p.reward_models):
            raise ConfigError(
                "config.ppo.reward_shaping='par' shapes one reward model's score; unset "
                "ppo.reward_fn and ppo.reward_models, or set reward_shaping='none'."
            )
        if p.reward_fn and p.reward_models:
            raise ConfigError(
                "config.ppo.reward_fn and ppo.reward_models both replace the RM's score; set one "
                "of them (reward_fn='' for the ensemble)."
            )
    if "meta" in config:
        m = config.meta
        if m.direction == "descent":  # a run's config; the plan's arm sets it on its own step
            raise ConfigError(
                "config.meta.direction='descent' (descent on J) is MetaRM's sign-flipped "
                "negative control, run only as the plan's arm: add metarm_descent to "
                "config.rlhf.baselines instead."
            )
        if m.direction == "random" and m.order != "first":
            raise ConfigError(
                "config.meta.direction='random' is a first-order control (a random direction "
                "has no Hessian to differentiate through); set config.meta.order='first'."
            )
    if "world" in config:
        try:
            synthetic.World(config.world)  # the world's own checks of its sizes
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None


def _check_rlhf(config) -> None:
    """What the rlhf stage needs besides its arms (``rlhf.validate``): a judge that exists, disjoint
    validation and test prompts, and inputs that must exist before it starts (read at its end)."""
    rc = config.rlhf
    if rc.judge == "gold" and not rc.world:
        raise ConfigError(
            "config.rlhf.judge='gold' needs the synthetic world's gold reward "
            "(config.rlhf.world=True); use 'rm', 'llm' or 'auto' on real data."
        )
    if not rc.world:  # the synthetic world sets its own splits
        ood = rc.meta_prompts == "ood"
        valid = rc.ood_valid_split if ood else rc.valid_prompt_split
        test = rc.ood_eval_split if ood else rc.eval_prompt_split
        if valid and valid == test:
            key = "ood_valid_split" if ood else "valid_prompt_split"
            raise ConfigError(
                f"config.rlhf.{key}={valid!r} is the test split: the best round would be "
                "chosen on the prompts it is compared on. Use another split, or '' to hold "
                "out the first rlhf.valid_prompts test prompts."
            )
    for key in ("rm_path", "judge_rm_path"):
        path = rc[key]
        if path and not (
            isinstance(path, str) and os.path.isfile(os.path.join(path, "config.json"))
        ):
            raise ConfigError(
                f"config.rlhf.{key}={path!r}: no HF checkpoint there (no config.json); give the "
                "directory of a trained reward model (e.g. <workdir>/export/rm)."
            )
    verdicts = rc.human_verdicts
    if verdicts and not (isinstance(verdicts, str) and os.path.isfile(verdicts)):
        raise ConfigError(
            f"config.rlhf.human_verdicts={rc.human_verdicts!r}: no such file; give the filled "
            "verdict CSV of an earlier rlhf.human_export."
        )
    if not rc.sft and not config.model.hf_path:
        raise ConfigError("config.rlhf.sft=False needs config.model.hf_path (the SFT policy).")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raise ConfigError (one clear line) for any value the run cannot use, before it starts.

    Checks, in order: every key is known; the stage names; every enum and range (``RULES``) and
    the checks across keys; the model preset or checkpoint; the checks each stage of the pipeline
    registers (``stages.VALIDATORS``: e.g. rlhf's arms, the LLM judge's settings). Given
    ``num_devices``, also ``check_devices``. main runs this before JAX starts its backend and
    ``check_devices`` once it knows the devices; both before any stage."""
    check_known_keys(config)
    pipeline = config.get("pipeline", ())
    stages.check_pipeline(pipeline)
    _check_rules(config)
    _check_across_keys(config)
    if "model" in config:
        _check_model(config.model)
    if "rlhf" in pipeline:
        _check_rlhf(config)
    for name in dict.fromkeys(pipeline):
        for check in stages.validators(name):
            check(config)
    if num_devices is not None:
        check_devices(config, num_devices)


def _batch_size_keys(config, prefix="") -> Iterator[tuple[str, int]]:
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _batch_size_keys(v, f"{prefix}{k}.")
        elif k.endswith("batch_size"):
            yield f"{prefix}{k}", v


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The mesh against ``num_devices``, and every ``*batch_size`` key against the mesh's
    data-parallel size."""
    try:
        sizes = sharding.resolve_mesh_shape(dict(config.mesh), num_devices)
    except sharding.ShardingError as e:
        raise ConfigError(f"config.{e}") from None
    dp = sizes[0] * sizes[1]
    for key, value in _batch_size_keys(config):
        if not is_int(value) or value <= 0 or value % dp:
            raise ConfigError(
                f"config.{key}={value} is not a positive multiple of the data-parallel size {dp} "
                f"(mesh data={sizes[0]} x fsdp={sizes[1]}); use a multiple of {dp} or change "
                "config.mesh."
            )
