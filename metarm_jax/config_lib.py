"""The one config system: ml_collections ConfigDicts built by ``configs/*.py:get_config(arg)``.

``base_config()`` holds every key the code reads; the defaults live in ``metarm_jax/defaults.py``
(one function per block). Config files start from it and change what they need;
``--config.a.b=v`` overrides any key, and an unknown or removed key is an error. ``resolve`` fills
every "inherit" value (``ppo.seed=-1``, ``ppo.policy_path=''``, ...) once, before any stage runs;
``validate`` checks the config against the machine before anything expensive runs.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterator

import ml_collections

from metarm_jax import defaults, sharding
from metarm_jax.errors import ConfigError
from metarm_jax.models import llama


def base_config() -> ml_collections.ConfigDict:
    """Every key the code reads, with its default (``metarm_jax/defaults.py``, one block each)."""
    c = ml_collections.ConfigDict()
    c.pipeline = ("inspect",)  # stages to run in order; see metarm_jax/stages.py
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


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path/to/config.py[:arg]`` -> ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--config={spec}: file {path!r} not found (configs live in configs/*.py)."
        )
    module_spec = importlib.util.spec_from_file_location("_metarm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: no get_config(arg) function.")
    return module.get_config(arg or None) if arg else module.get_config()


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
            "listed in metarm_jax/defaults.py."
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


# ---------------------------------------------------------------------------------------------
# Resolution: the one place where "inherit" values become the values the stages use.


def _inherit(node, key: str, value, empty=("",)) -> None:
    if node[key] in empty:
        node[key] = value


def resolve(
    config: ml_collections.ConfigDict, workdir: str | None = None
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every "inherit" value filled (idempotent).

    ====================================  =============================================
    key (inherit marker)                  becomes
    ====================================  =============================================
    ppo.policy_path ('')                  model.hf_path ('' stays: the random preset)
    ppo.ref_path ('')                     ppo.policy_path
    ppo.critic_path ('')                  ppo.rm_path
    ppo.frozen_dtype ('')                 model.param_dtype
    ppo.max_new_tokens (0)                sampling.max_new_tokens
    ppo.seed (-1)                         seed
    dpo.ref_dtype ('')                    model.param_dtype
    build_meta.policy_path ('')           model.hf_path
    build_meta.prompt_{dataset,path,split} ('')   data.prompt_{dataset,path,split}
    build_meta.output_path ('')           data.meta_path, else <workdir>/meta.jsonl
    rlhf.eval_prompt_{dataset,path} ('')  data.prompt_{dataset,path}
    ====================================  =============================================

    ``workdir`` (default ``config.workdir``) places the default meta output. Blocks a config
    does not have are left alone.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    workdir = config.get("workdir", "") if workdir is None else workdir
    m, d = out.get("model"), out.get("data")
    if "ppo" in out and m is not None:
        p = out.ppo
        _inherit(p, "policy_path", m.hf_path)
        _inherit(p, "ref_path", p.policy_path)
        _inherit(p, "critic_path", p.rm_path)
        _inherit(p, "frozen_dtype", m.param_dtype)
        if "sampling" in out:
            _inherit(p, "max_new_tokens", out.sampling.max_new_tokens, empty=(0,))
        _inherit(p, "seed", out.seed, empty=(-1,))
    if "dpo" in out and m is not None:
        _inherit(out.dpo, "ref_dtype", m.param_dtype)
    if "build_meta" in out and d is not None:
        bm = out.build_meta
        if m is not None:
            _inherit(bm, "policy_path", m.hf_path)
        for key in ("dataset", "path", "split"):
            _inherit(bm, f"prompt_{key}", d[f"prompt_{key}"])
        default_meta = os.path.join(workdir, "meta.jsonl") if workdir else ""
        _inherit(bm, "output_path", d.meta_path or default_meta)
    if "rlhf" in out and d is not None:
        for key in ("dataset", "path"):
            _inherit(out.rlhf, f"eval_prompt_{key}", d[f"prompt_{key}"])
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _batch_size_keys(config, prefix="") -> Iterator[tuple[str, int]]:
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _batch_size_keys(v, f"{prefix}{k}.")
        elif k.endswith("batch_size") and isinstance(v, int):
            yield f"{prefix}{k}", v


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError (one clear line) for a config that cannot run on ``num_devices``.

    (``stages.check_pipeline`` checks the stage names; main calls both.)"""
    check_known_keys(config)
    try:
        sizes = sharding.resolve_mesh_shape(dict(config.mesh), num_devices)
    except sharding.ShardingError as e:
        raise ConfigError(f"config.{e}") from None
    dp = sizes[0] * sizes[1]
    m = config.model
    if m.hf_path:
        if not os.path.isdir(m.hf_path):
            raise ConfigError(
                f"config.model.hf_path={m.hf_path!r}: no such directory; point it at a "
                "local HF checkpoint (config.json + *.safetensors)."
            )
        if not os.path.isfile(os.path.join(m.hf_path, "config.json")):
            raise ConfigError(f"config.model.hf_path={m.hf_path!r}: no config.json in it.")
    elif m.preset not in llama.PRESETS:
        raise ConfigError(
            f"config.model.preset={m.preset!r}: unknown preset; expected one of "
            f"{sorted(llama.PRESETS)} (or set config.model.hf_path)."
        )
    for key, allowed in (
        ("dtype", llama.DTYPES),
        ("param_dtype", llama.DTYPES),
        ("remat", llama.REMAT_POLICIES),
    ):
        if m[key] not in allowed:
            raise ConfigError(f"config.model.{key}={m[key]!r}; expected one of {sorted(allowed)}.")
    for key, value in _batch_size_keys(config):
        if value <= 0 or value % dp:
            raise ConfigError(
                f"config.{key}={value} is not a positive multiple of the data-parallel size {dp} "
                f"(mesh data={sizes[0]} x fsdp={sizes[1]}); use a multiple of {dp} or change "
                "config.mesh."
            )
    if "meta" in config and "k" in config.meta and config.meta.k < 2:
        raise ConfigError(
            f"config.meta.k={config.meta.k}: the difference loss J compares pairs of "
            "responses per prompt; k must be at least 2."
        )
