"""Evaluation: judges and win rates (more to come: diversity, reward-difference statistics, plots)."""

from metarm_jax.eval.judges import GoldJudge, Judge, JudgeResult, RewardModelJudge, ScoreJudge

__all__ = ["GoldJudge", "Judge", "JudgeResult", "RewardModelJudge", "ScoreJudge"]
