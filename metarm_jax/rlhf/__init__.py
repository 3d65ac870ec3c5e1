"""Iterative RLHF: the rounds driver (``driver.run``, the stage ``rlhf``), the plan of arms
(``plan``), the run's directory layout (``layout``), the report (``report`` gathers, ``compute``
makes the numbers, ``render`` the text and figures) and the seed aggregation (``seeds``)."""

from metarm_jax.rlhf.driver import run
from metarm_jax.rlhf.plan import validate

__all__ = ["run", "validate"]
