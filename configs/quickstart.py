"""Quickstart on the embedded default: a tiny Llama on the CPU.

    python -m metarm_jax.main --config=configs/quickstart.py

For now the pipeline is the `inspect` stage (build the model on the mesh, print its layout,
time a forward); the synthetic-world RLHF rounds replace it when they land.
"""

from metarm_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.model.preset = "tiny"
    config.pipeline = ("inspect",)
    return config
