"""Evaluation: judges (gold, reward model) and the run report of iterative RLHF."""

from metarm_jax.eval.judges import GoldJudge, Judge, JudgeResult, RewardModelJudge, ScoreJudge

__all__ = ["GoldJudge", "Judge", "JudgeResult", "RewardModelJudge", "ScoreJudge"]
