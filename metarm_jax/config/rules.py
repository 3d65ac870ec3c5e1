"""The allowed values of every config key with a set or range: ``RULES[block][key]``, a ``Rule``
(``ok(value)`` and the words for what it expects). ``config_lib.validate`` applies them once,
before any stage runs; the checks that relate keys, and each stage's own, live there and in
``stages.VALIDATORS``. Every default stays in ``defaults.py``; a rule's test is that each default
passes it (tests/test_config_validation.py).
"""

from __future__ import annotations

import math

from metarm_jax.core import ensemble, metarm
from metarm_jax.core import ppo as ppo_math
from metarm_jax.data.schemas import pku
from metarm_jax.generation import sampling
from metarm_jax.models import llama

# The allowed values of enum keys whose code lives above this module (train/, eval/); keys whose
# code lives below import theirs (core.metarm.ORDERS, core.ppo.KL_ESTIMATORS, llama.DTYPES, ...).
SCHEDULES = ("constant", "linear", "cosine")  # train/optim.py
OPTIMIZERS = ("adamw", "adam", "sgd")  # train/optim.py
JUDGES = ("auto", "gold", "rm", "llm")  # rlhf/report.py
DIVERSITY = ("", "self_bleu", "all")  # rlhf/report.py
RM_EVAL_FORMATS = ("v1", "v2")  # eval/rewardbench.py
RM_EVAL_CONVERSATION = ("auto", "hh", "chat_template")  # eval/rm_eval.py


class Rule:
    """One key's allowed values: ``ok(value)`` and the words for them."""

    def __init__(self, ok, expect: str, options: tuple = ()):
        self.ok, self.expect, self.options = ok, expect, options  # options: an enum's values


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and not math.isnan(v)


def _int(lo: int, hi: int | None = None) -> Rule:
    words = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(lambda v: is_int(v) and lo <= v and (hi is None or v <= hi), words)


def _real(lo: float, hi: float | None = None, *, lo_open=False, hi_open=False) -> Rule:
    if hi is None:
        words = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def ok(v):
        if not _is_real(v) or v < lo or (lo_open and v == lo):
            return False
        return hi is None or v < hi or (not hi_open and v == hi)

    return Rule(ok, words)


def _choice(*options) -> Rule:
    return Rule(
        lambda v: isinstance(v, str) and v in options,
        "one of " + ", ".join(map(repr, options)),
        options,
    )


def _pair(lo: float, hi: float) -> Rule:
    return Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and len(v) == 2
            and all(_is_real(x) for x in v)
            and lo <= v[0] <= v[1] <= hi
        ),
        f"a pair (lo, hi) with {lo:g} <= lo <= hi <= {hi:g}",
    )


def _ints(lo: int) -> Rule:
    return Rule(
        lambda v: isinstance(v, tuple | list) and all(is_int(x) and x >= lo for x in v),
        f"a tuple of integers >= {lo}",
    )


def _paths(words: str) -> Rule:
    """A tuple of M directories: () (off) or M >= 2 non-empty strings."""
    return Rule(
        lambda v: (
            isinstance(v, tuple | list) and len(v) != 1 and all(isinstance(x, str) and x for x in v)
        ),
        words,
    )


_COUNT, _STEPS, _NONNEG = _int(1), _int(0), _real(0)
_INTEGER, _NUMBER = Rule(is_int, "an integer"), Rule(_is_real, "a number")
_INT_PAIR = Rule(
    lambda v: isinstance(v, tuple | list) and len(v) == 2 and all(is_int(x) for x in v),
    "a pair (lo, hi) of integers",
)
_DTYPE_OR_INHERIT = Rule(
    lambda v: v == "" or (isinstance(v, str) and v in llama.DTYPES),
    f"'' or one of {', '.join(map(repr, sorted(llama.DTYPES)))}",
    ("", *sorted(llama.DTYPES)),
)
# The keys train.* shares with sft.* and dpo.* (which override it for their stage).
_LOOP_RULES = {
    "steps": _STEPS,
    "epochs": _NONNEG,
    "lr": _NONNEG,
    "schedule": _choice(*SCHEDULES),
    "warmup": _NONNEG,
    "end_lr_factor": _NONNEG,
}
RULES: dict[str, dict[str, Rule]] = {
    "distributed": {
        "mode": _choice("auto", "on", "off"),
        "num_processes": _int(0),
        "process_id": _int(-1),
        "heartbeat_timeout_s": _real(0, lo_open=True),
    },
    "model": {
        "vocab_size": _int(0),
        "dtype": _choice(*sorted(llama.DTYPES)),
        "param_dtype": _choice(*sorted(llama.DTYPES)),
        "remat": _choice(*sorted(llama.REMAT_POLICIES)),
        "attention": _choice(*llama.ATTENTIONS),
    },
    "data": {
        "conversation_format": _choice("hh", "chat_template"),
        "pku_preference": _choice(*pku.PREFERENCE_FIELDS),
        "on_bad_record": _choice("skip", "error"),
        "max_skip_fraction": _real(0, 1),
        "max_length": _COUNT,
        "bucket_lengths": _ints(1),
        "pad_side": _choice("left", "right"),
        "max_prompt_length": _int(0),
        "num_epochs": Rule(
            lambda v: v is None or (is_int(v) and v >= 0), "None or an integer >= 0"
        ),
        "num_threads": _int(0),
        "prefetch_buffer_size": _int(0),
    },
    "train": {
        **_LOOP_RULES,
        "optimizer": _choice(*OPTIMIZERS),
        "b1": _real(0, 1, hi_open=True),
        "b2": _real(0, 1, hi_open=True),
        "eps": _NONNEG,
        "weight_decay": _NONNEG,
        "clip_norm": _NONNEG,
        "grad_accum": _COUNT,
        "eval_every": _STEPS,
        "eval_batches": _STEPS,
        "log_every": _STEPS,
        "save_every": _STEPS,
        "keep": _COUNT,
        "nan_patience": _COUNT,
        "center_rewards": Rule(_NONNEG.ok, "a number >= 0 (0 = no reward centring)"),
    },
    "meta": {
        "eta": _NONNEG,
        "order": _choice(*metarm.ORDERS),
        "second_order": _choice(*metarm.SECOND_ORDER),
        "eta_mode": _choice(*metarm.ETA_MODES),
        "direction": _choice(*metarm.DIRECTIONS),
        "k": Rule(
            _int(2).ok,
            "an integer >= 2 (the difference loss J compares pairs of responses to the same "
            "prompt; with fewer MetaRM is the vanilla RM); set e.g. --config.meta.k=5 (the paper's)",
        ),
        "hist_bins": _COUNT,
        "hist_max": _NONNEG,
    },
    "sampling": {
        # the sampler's knobs: their ranges live in generation/sampling.py (LIMITS)
        **{
            k: Rule(lambda v, ok=ok, k=k: _is_real(v) and (k != "top_k" or is_int(v)) and ok(v), w)
            for k, (ok, w) in sampling.LIMITS.items()
        },
        "max_new_tokens": _COUNT,
        "min_new_tokens": _int(0),
        "stop_token_ids": _ints(0),
        "prompt_bucket_min": _int(0),
    },
    "build_meta": {
        "policy_step": _int(-1),
        "round": _int(0),
        "skip_prompts": _int(0),
        "max_prompts": _int(0),
        "k": _COUNT,
        "chunk_size": _COUNT,
    },
    "sft": {**_LOOP_RULES, "warmup_epochs": _NONNEG, "val_holdout": _int(0)},
    "dpo": {
        **_LOOP_RULES,
        "beta": _real(0, lo_open=True),
        "label_smoothing": _real(0, 0.5),
        "init": _choice("model", "sft"),
        "ref_dtype": _DTYPE_OR_INHERIT,
    },
    "ppo": {
        "frozen_dtype": _DTYPE_OR_INHERIT,
        "iterations": _COUNT,
        "queries_per_iteration": _COUNT,
        "rollouts_per_query": Rule(
            _int(2).ok,
            "an integer >= 2 (the shift signal compares roll-outs of the same prompt)",
        ),
        "max_new_tokens": Rule(_int(0).ok, "an integer >= 0 (0 = sampling.max_new_tokens)"),
        "ppo_epochs": _COUNT,
        "minibatch_size": _COUNT,
        "seed": Rule(_int(-1).ok, "an integer >= -1 (-1 = the top-level seed)"),
        "iteration_offset": _int(0),
        "export_every": _int(0),
        "policy_lr": _NONNEG,
        "critic_lr": _NONNEG,
        "schedule": _choice(*SCHEDULES),
        "warmup": _NONNEG,
        "clip_norm": _NONNEG,
        "critic_warmup": _int(0),
        "kl_beta": _NONNEG,
        "kl_estimator": _choice(*ppo_math.KL_ESTIMATORS),
        "kl_clip": Rule(_NONNEG.ok, "a number >= 0 (0 switches the clip off)"),
        "reward_norm": _choice(*ppo_math.REWARD_NORMS),
        "reward_shaping": _choice(*ppo_math.REWARD_SHAPINGS),
        "reward_clip": Rule(_NONNEG.ok, "a number >= 0 (0 switches the clip off)"),
        "gamma": _real(0, 1),
        "lam": _real(0, 1),
        "clip_eps": _NONNEG,
        "value_clip_eps": _NONNEG,
        "vf_coef": _NONNEG,
        "target_kl": Rule(_NONNEG.ok, "a number >= 0 (0 = off)"),
        "save_every": _STEPS,
        "shift_hist_bins": _COUNT,
        "shift_hist_max": _real(0, lo_open=True),
        "reward_models": _paths(
            "() or a tuple of at least 2 RM directories (an ensemble of one is ppo.rm_path)"
        ),
        "ensemble_agg": _choice(*ensemble.AGGREGATIONS),
        "ensemble_lambda": _NONNEG,
    },
    "rlhf": {
        "tokenizer_vocab": _int(0),
        "judge": _choice(*JUDGES),
        "tie_margin": _NONNEG,
        "report_examples": _int(0),
        "bootstrap": _COUNT,
        "diversity": _choice(*DIVERSITY),
        "ensemble_size": Rule(
            _int(2).ok, "an integer >= 2 (members of the ensemble and WARM arms, r_0 included)"
        ),
        "center_rewards": _real(0, lo_open=True),
    },
    "world": {  # besides these, synthetic.World checks its sizes itself (num_symbols, ...)
        "num_symbols": _INTEGER,
        "num_groups": _INTEGER,
        "prompt_len": _INT_PAIR,
        "ood_prompt_len": _INT_PAIR,
        "response_len": _INT_PAIR,
        "topic_purity": _real(0, 1),
        "ood_topic_purity": _real(0, 1),
        "base_good_frac": _pair(0, 1),
        "saturated_good_frac": _pair(0, 1),
        "base_fine_frac": _pair(0, 1),
        "saturated_fine_frac": _pair(0, 1),
        "fine_size": _int(0),
        "w_fine": _NONNEG,
        "base_sorted_prob": _real(0, 1),
        "base_repeat_prob": _real(0, 1),
        "coarse_cap": _NUMBER,
        "length_tolerance": _NUMBER,
        "bt_temperature": _NONNEG,
        **{
            f"num_{n}": _COUNT
            for n in (
                "sft",
                "train_pairs",
                "test_pairs",
                "train_prompts",
                "eval_prompts",
                "valid_prompts",
                "ood_prompts",
                "ood_train_prompts",
            )
        },
    },
    "rm_eval": {
        "format": _choice(*RM_EVAL_FORMATS),
        "conversation_format": _choice(*RM_EVAL_CONVERSATION),
    },
    "warm": {"rm_paths": _paths("() or a tuple of at least 2 RM directories to average")},
    "inspect": {"head": _choice(*llama.HEADS), "seq_len": _COUNT},
}
