"""The one config system: ml_collections ConfigDicts built by ``configs/*.py:get_config(arg)``.

``base_config()`` holds every key the code reads, with defaults; config files start from it and
change what they need. ``--config.a.b=v`` overrides any key; an unknown key is an error.
``validate`` checks the config against the machine before anything expensive runs.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterator

import ml_collections

from metarm_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.pipeline = ("inspect",)  # stages to run in order; see metarm_jax/stages.py
    c.seed = 0
    c.seeds = 1  # >1: run the whole pipeline once per seed (seed, seed+1, ...)
    c.workdir = ""  # set by --workdir (default runs/<config name>)

    # Mesh axis sizes; one may be -1 to take the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    # Multi-host. "auto": initialise jax.distributed when a launcher's environment says so
    # (TPU pod, SLURM, or the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables
    # that launch/pod.sh sets); "on": always; "off": never.
    c.distributed = ml_collections.ConfigDict(
        dict(
            mode="auto",
            coordinator_address="",
            num_processes=0,
            process_id=-1,
            cpu_collectives="gloo",
        )
    )

    c.model = ml_collections.ConfigDict(
        dict(
            preset="tiny",  # metarm_jax.models.llama.PRESETS, used when hf_path is empty
            vocab_size=0,  # >0: override the preset's vocabulary (e.g. a small tokenizer's)
            hf_path="",  # local HF checkpoint directory (config.json + safetensors)
            dtype="float32",  # compute dtype: float32 | bfloat16
            param_dtype="float32",  # weight storage dtype
            remat="none",  # none | full | dots | dots_no_batch
            scan_layers=True,  # lax.scan over the stacked layers
        )
    )

    from metarm_jax import build_meta, sampling
    from metarm_jax.data.config import data_config
    from metarm_jax.data.synthetic import world_config
    from metarm_jax.rlhf import rlhf_config
    from metarm_jax.train.config import meta_config, train_config
    from metarm_jax.train.policy_config import dpo_config, sft_config
    from metarm_jax.train.ppo_config import ppo_config

    c.data = data_config()
    c.train = train_config()  # the one train loop (RM, MetaRM; later SFT, DPO, PPO)
    c.meta = meta_config()  # MetaRM: eta, order, k
    c.sampling = sampling.default_config()  # the one sampler (roll-outs, meta data)
    c.build_meta = build_meta.default_config()  # the meta-dataset builder stage
    c.sft = sft_config()  # SFT's own lr/epochs/schedule over the shared loop settings
    c.dpo = dpo_config()  # the DPO baseline
    c.ppo = ppo_config()  # actor / critic / reference / RM
    c.rlhf = rlhf_config()  # the iterative rounds (metarm_jax/rlhf.py)
    c.world = world_config()  # the synthetic world of the quickstart

    # The `inspect` stage: load/build the model on the mesh, print its layout, run a forward.
    c.inspect = ml_collections.ConfigDict(dict(head="lm", batch_size=8, seq_len=32))
    return c


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


def check_override_keys(config: ml_collections.ConfigDict, keys: list[str]) -> None:
    """Every ``--config.KEY=`` must name an existing key (a typo must not be silently ignored)."""
    known = set(flat_keys(config))
    for key in keys:
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" Did you mean --config.{close[0]}?" if close else ""
        where = f"under {parent!r}" if parent else "at the top level"
        raise ConfigError(
            f"--config.{key}: unknown config key.{hint} Keys {where}: "
            f"{', '.join(s.rpartition('.')[2] for s in siblings) or '(none)'}."
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


# ---------------------------------------------------------------------------------------------
# Validation


def _batch_size_keys(config, prefix="") -> Iterator[tuple[str, int]]:
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _batch_size_keys(v, f"{prefix}{k}.")
        elif k.endswith("batch_size") and isinstance(v, int):
            yield f"{prefix}{k}", v


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError (one clear line) for a config that cannot run on ``num_devices``."""
    from metarm_jax import sharding, stages
    from metarm_jax.models import llama

    stages.check_pipeline(config.pipeline)
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


def model_config(config: ml_collections.ConfigDict):
    """The LlamaConfig this run uses (from the HF checkpoint's config.json or the preset)."""
    from metarm_jax.models import hf, llama

    m = config.model
    policy = dict(
        dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, scan_layers=m.scan_layers
    )
    if m.hf_path:
        return hf.config_from_hf(
            hf.read_config(m.hf_path), source=os.path.join(m.hf_path, "config.json"), **policy
        )
    if m.vocab_size:
        policy["vocab_size"] = m.vocab_size
    return llama.preset(m.preset, **policy)


def build_model(
    config: ml_collections.ConfigDict, head: str, mesh=None, *, seed: int | None = None
):
    """The model a stage starts from: ``config.model.hf_path`` if set, else a random preset."""
    from metarm_jax.models import hf, llama

    m = config.model
    seed = config.seed if seed is None else seed
    if m.hf_path:
        return hf.load_hf(
            m.hf_path,
            head,
            mesh=mesh,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
            remat=m.remat,
            scan_layers=m.scan_layers,
            seed=seed,
        )
    return llama.create(model_config(config), head, seed=seed, mesh=mesh)
