"""metarm-jax: MetaRM reward models and iterative RLHF in JAX / Flax NNX (README, "Layout").

The modules that once sat at the package root moved into named groups (``runtime/``,
``config/``, ``generation/``); ``from metarm_jax import config_lib`` and the other old names
still resolve, with a DeprecationWarning, so that config files written against them keep working.
"""

import importlib
import warnings

_MOVED = {
    "errors": "runtime.errors",
    "fileio": "runtime.fileio",
    "faults": "runtime.faults",
    "hosts": "runtime.hosts",
    "checkpoint": "runtime.checkpoint",
    "layout": "runtime.layout",
    "defaults": "config.defaults",
    "config_rules": "config.rules",
    "config_lib": "config.lib",
    "stages": "config.stages",
    "sampling": "generation.sampling",
    "scoring": "generation.scoring",
    "build_meta": "generation.build_meta",
}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"metarm_jax.{name} moved to metarm_jax.{_MOVED[name]}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(f"metarm_jax.{_MOVED[name]}")
    raise AttributeError(f"module 'metarm_jax' has no attribute {name!r}")
