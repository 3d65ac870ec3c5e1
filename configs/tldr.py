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


def get_config(arg=None):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/tldr.py: unknown argument {arg!r}; use 'runlocal' or nothing.")
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "_hh", os.path.join(os.path.dirname(__file__), "hh_rlhf.py")
    )
    hh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hh)
    c = hh.get_config(arg)  # the same model, mesh and paper hyper-parameters
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
    c.rlhf.rounds = 5 if arg != "runlocal" else 2
    if arg == "runlocal":  # no TL;DR sample ships with the repo: pass local copies by flag
        d.path = d.sft_path = d.prompt_path = ""
        d.split, d.eval_split, d.sft_split, d.prompt_split = "train", "validation", "train", "train"
    return c
