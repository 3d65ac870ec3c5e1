"""Judges: win / tie / lose of policy A's responses against opponent B's on the same prompts.

A judge compares one response of A and one of B per prompt. Score judges score each response
and call the difference `d = s_A - s_B`: win if d > tie_margin, lose if d < -tie_margin, tie
otherwise (|d| <= tie_margin), so win + tie + lose == number of prompts, always.

  GoldJudge(world)           the synthetic world's hidden gold reward (metarm_jax.data.synthetic)
  RewardModelJudge(score_fn) any scorer score_fn(prompts, responses) -> [n] (e.g. a trained RM)

An LLM judge (both orders asked, to cancel position bias) fits the same `Judge.compare` interface.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

ScoreFn = Callable[[list[str], list[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """Outcome counts of A against B; `margins` [n] = s_A - s_B per prompt (score judges) and
    `outcomes` [n] the per-prompt verdicts (for paired bootstrap intervals)."""

    win: int
    tie: int
    lose: int
    margins: np.ndarray | None = None
    outcomes: np.ndarray | None = None  # [n] per prompt: +1 A wins, 0 tie, -1 A loses

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def win_rate(self) -> float:
        return self.win / self.n if self.n else 0.0

    @property
    def tie_rate(self) -> float:
        return self.tie / self.n if self.n else 0.0

    @property
    def lose_rate(self) -> float:
        return self.lose / self.n if self.n else 0.0

    def as_metrics(self, prefix: str = "judge") -> dict[str, float]:
        return {
            f"{prefix}/win": self.win_rate,
            f"{prefix}/tie": self.tie_rate,
            f"{prefix}/lose": self.lose_rate,
            f"{prefix}/n": float(self.n),
        }

    def __str__(self):
        return (
            f"win {self.win} ({self.win_rate:.1%}) / tie {self.tie} ({self.tie_rate:.1%}) / "
            f"lose {self.lose} ({self.lose_rate:.1%}) over {self.n} prompts"
        )


class Judge:
    """Interface: compare(prompts, responses_a, responses_b) -> JudgeResult."""

    def compare(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> JudgeResult:
        raise NotImplementedError


def _check_lengths(prompts, responses_a, responses_b) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"a judge needs one response of A and one of B per prompt; got "
            f"{len(prompts)} prompts, {len(responses_a)} responses of A and "
            f"{len(responses_b)} of B."
        )


class ScoreJudge(Judge):
    """Judges by the difference of a scalar score, with a tie margin."""

    def __init__(self, score_fn: ScoreFn, tie_margin: float = 0.0):
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}.")
        self.score_fn = score_fn
        self.tie_margin = float(tie_margin)

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        s = np.asarray(self.score_fn(list(prompts), list(responses)), np.float64).reshape(-1)
        if s.shape != (len(prompts),):
            raise ValueError(f"score_fn returned {s.size} scores for {len(prompts)} prompts.")
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ValueError(
                f"score_fn returned non-finite scores at rows {bad[:5].tolist()} "
                f"(e.g. {s[bad[0]]}); a judge cannot rank them."
            )
        return s

    def compare(self, prompts, responses_a, responses_b) -> JudgeResult:
        _check_lengths(prompts, responses_a, responses_b)
        d = self.scores(prompts, responses_a) - self.scores(prompts, responses_b)
        outcomes = (d > self.tie_margin).astype(np.int64) - (d < -self.tie_margin)
        win, lose = int((outcomes > 0).sum()), int((outcomes < 0).sum())
        return JudgeResult(win, len(d) - win - lose, lose, d, outcomes)


class GoldJudge(ScoreJudge):
    """The synthetic world's gold reward g(x, y); prompts may be plain or HH-formatted text."""

    def __init__(self, world, tie_margin: float = 0.0):
        super().__init__(world.gold, tie_margin)
        self.world = world


class RewardModelJudge(ScoreJudge):
    """A reward model (or any scorer): score_fn(prompts: list[str], responses: list[str]) -> [n]."""
