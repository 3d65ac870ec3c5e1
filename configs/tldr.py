"""MetaRM on Reddit TL;DR summarisation with Llama-2-7B: 5 rounds (the paper's second task).

SFT on CarperAI/openai_summarize_tldr, the RM on openai/summarize_from_feedback (comparisons),
roll-out and meta prompts from the TL;DR posts. On a pod:
    python -m metarm_jax.main --config=configs/tldr.py \\
        --config.model.hf_path=/data/Llama-2-7b-hf --config.data.tokenizer_path=/data/Llama-2-7b-hf \\
        --config.data.path=/data/summarize_from_feedback --config.data.sft_path=/data/tldr_sft \\
        --config.data.prompt_path=/data/tldr_sft
With local copies of those datasets (hub schema, any of json/jsonl/parquet) on a CPU:
    python -m metarm_jax.main --config=configs/tldr.py:runlocal --config.data.path=... (same keys)
"""

from configs import hh_rlhf
from metarm_jax.config import lib as config_lib

# runlocal: a tiny model on local copies of the datasets (CPU).
ARGS = {"runlocal": bool}


def get_config(arg=None):
    runlocal = config_lib.parse_config_args(arg, ARGS, "configs/tldr.py").get("runlocal", False)
    c = hh_rlhf.get_config("runlocal" if runlocal else None)  # the same model, mesh, paper values
    d = c.data
    d.dataset, d.path, d.name = (
        "summarize_from_feedback",
        "openai/summarize_from_feedback",
        "comparisons",
    )
    d.split, d.eval_split = "train", "validation"
    d.sft_dataset, d.sft_path, d.sft_split = "tldr_sft", "CarperAI/openai_summarize_tldr", "train"
    d.prompt_dataset, d.prompt_path, d.prompt_split = (
        "tldr_sft",
        "CarperAI/openai_summarize_tldr",
        "train",
    )
    d.sft_data_dir = d.data_dir = d.prompt_data_dir = ""
    c.rlhf.rounds = 2 if runlocal else 5
    if runlocal:  # no TL;DR sample ships with the repo: pass local copies by flag
        d.path = d.sft_path = d.prompt_path = ""
        d.split, d.eval_split, d.sft_split, d.prompt_split = "train", "validation", "train", "train"
    return c
