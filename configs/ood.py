"""The OOD setting: the RM learns from HH-RLHF pairs, the meta data comes from prompts of another
distribution — OpenAssistant OASST1 (helpful) or PKU-SafeRLHF (harmless).

    python -m metarm_jax.main --config=configs/ood.py:helpful  --config.model.hf_path=... \\
        --config.rlhf.ood_prompt_path=/data/oasst1
    python -m metarm_jax.main --config=configs/ood.py:harmless --config.model.hf_path=... \\
        --config.rlhf.ood_prompt_path=/data/PKU-SafeRLHF
    python -m metarm_jax.main --config=configs/ood.py:helpful,runlocal \\
        --config.rlhf.ood_prompt_path=/local/oasst1     # tiny model, HH sample from ../shared
"""

from configs import hh_rlhf
from metarm_jax.config import lib as config_lib
from metarm_jax.runtime.errors import ConfigError

# helpful (the default) or harmless: the OOD prompt set; runlocal: a tiny model (CPU).
ARGS = {"helpful": bool, "harmless": bool, "runlocal": bool}


def get_config(arg=None):
    args = config_lib.parse_config_args(arg, ARGS, "configs/ood.py")
    if args.get("helpful") and args.get("harmless"):
        raise ConfigError("configs/ood.py: give helpful or harmless, not both.")
    runlocal = args.get("runlocal", False)
    c = hh_rlhf.get_config("runlocal" if runlocal else None)
    r = c.rlhf
    r.meta_prompts = "ood"
    if not args.get("harmless"):
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
    if runlocal:
        r.ood_prompt_path = ""  # no OOD sample ships with the repo: pass a local copy by flag
    return c
