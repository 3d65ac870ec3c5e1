"""Local tokenizers: train a tiny BPE tokenizer (tests, runlocal configs) and load one by path."""

from __future__ import annotations

import os
from collections.abc import Iterable

from metarm_jax.data.records import DataError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str):
    """Trains a byte-level BPE tokenizer on `texts`, saves it to `out_dir`, returns it loaded.

    The saved directory is a transformers PreTrainedTokenizerFast (pad <pad>=0, bos <s>=1,
    eos </s>=2, unk <unk>=3), loadable with `load_tokenizer(out_dir)`. Byte-level, so any text
    encodes without unknown tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str):
    """AutoTokenizer from a local directory; a clear DataError when it is missing or lacks pad/eos."""
    if not path or not os.path.isdir(path):
        raise DataError(
            f"tokenizer directory {path!r} does not exist; set data.tokenizer_path to a "
            "local directory saved with save_pretrained (or make one with "
            "metarm_jax.data.tokenizer.train_bpe_tokenizer)."
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise DataError(
            f"{path}: could not load a tokenizer ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})."
        ) from None
    if tok.eos_token_id is None:
        raise DataError(f"{path}: the tokenizer has no eos token; every sequence ends with EOS.")
    if tok.pad_token_id is None:
        raise DataError(
            f"{path}: the tokenizer has no pad token; set one (e.g. pad = eos or unk) "
            "and save it again."
        )
    return tok
