"""MetaRM on Anthropic HH-RLHF with Llama-2-7B (the paper's setting).

On a pod (see launch/pod.sh):
    python -m metarm_jax.main --config=configs/hh_rlhf.py \
        --config.model.hf_path=/path/to/Llama-2-7b-hf
On a CPU (tiny model):
    python -m metarm_jax.main --config=configs/hh_rlhf.py:runlocal

The training stages (sft, rm, metarm, ppo) are added to the pipeline as they land; today the
pipeline checks the model and mesh (`inspect`).
"""

from metarm_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.model.preset = "llama2_7b"
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.remat = "dots_no_batch"
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.pipeline = ("inspect",)
    config.inspect.batch_size = 16
    config.inspect.seq_len = 512
    if arg == "runlocal":
        config.model.preset = "tiny"
        config.model.dtype = "float32"
        config.model.remat = "none"
        config.mesh.fsdp = 1
        config.mesh.data = -1
        config.inspect.batch_size = 8
        config.inspect.seq_len = 32
    elif arg:
        raise ValueError(f"configs/hh_rlhf.py: unknown argument {arg!r}; use 'runlocal' or nothing.")
    return config
