"""The OOD setting: the RM learns from HH-RLHF pairs, the meta data comes from prompts of another
distribution — OpenAssistant OASST1 (helpful) or PKU-SafeRLHF (harmless).

    python -m metarm_jax.main --config=configs/ood.py:helpful  --config.model.hf_path=... \\
        --config.rlhf.ood_prompt_path=/data/oasst1
    python -m metarm_jax.main --config=configs/ood.py:harmless --config.model.hf_path=... \\
        --config.rlhf.ood_prompt_path=/data/PKU-SafeRLHF
    python -m metarm_jax.main --config=configs/ood.py:helpful,runlocal \\
        --config.rlhf.ood_prompt_path=/local/oasst1     # tiny model, HH sample from ../shared
"""


def get_config(arg=None):
    import importlib.util
    import os

    args = set((arg or "helpful").split(","))
    target = args & {"helpful", "harmless"}
    if len(target) != 1 or args - {"helpful", "harmless", "runlocal"}:
        raise ValueError(
            f"configs/ood.py: argument {arg!r}; use helpful or harmless, optionally with ,runlocal."
        )
    spec = importlib.util.spec_from_file_location(
        "_hh", os.path.join(os.path.dirname(__file__), "hh_rlhf.py")
    )
    hh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hh)
    c = hh.get_config("runlocal" if "runlocal" in args else None)
    r = c.rlhf
    r.meta_prompts = "ood"
    if target == {"helpful"}:
        r.ood_prompt_dataset, r.ood_prompt_path, r.ood_prompt_split = (
            "oasst1",
            "OpenAssistant/oasst1",
            "validation",
        )
        c.data.oasst_lang = "en"
    else:
        r.ood_prompt_dataset, r.ood_prompt_path, r.ood_prompt_split = (
            "pku_saferlhf",
            "PKU-Alignment/PKU-SafeRLHF",
            "test",
        )
    if "runlocal" in args:
        r.ood_prompt_path = ""  # no OOD sample ships with the repo: pass a local copy by flag
    return c
