"""The data layer: readers -> canonical records -> tokens -> grain pipelines. See docs/data.md.

Names are imported lazily: importing one module of the layer (the synthetic world, say) does not
import datasets and grain.
"""

import importlib

_EXPORTS = {
    "features": (
        "TokenSpec",
        "real_rows",
        "tokenize_meta",
        "tokenize_pairs",
        "tokenize_prompts",
        "tokenize_sft",
    ),
    "pipeline": (
        "iterator",
        "load_records",
        "make_iter_dataset",
        "meta_iterator",
        "preference_iterator",
        "prompt_iterator",
        "restore_iterator_state",
        "save_iterator_state",
        "sft_iterator",
    ),
    "readers": (
        "DataSource",
        "load",
    ),
    "schemas.meta": ("write_meta_dataset",),
    "records": (
        "DataError",
        "MetaExample",
        "PreferencePair",
        "PromptExample",
        "Records",
        "SamplingInfo",
        "SFTExample",
        "SkipReport",
        "Source",
    ),
    "tokenizer": ("load_tokenizer", "train_bpe_tokenizer"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
