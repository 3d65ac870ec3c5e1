"""The plan of arms: every policy the rlhf stage trains, what it differs in, and what the report
calls it. The rounds driver, the budgets, the policy names and the report all read this table;
adding an arm is one entry in ``ARMS`` plus, for a rounds arm, its RM-training function
(``metarm_jax/rlhf/rm_methods.py``). The table also declares what the report checks and compares:
which arms are positive controls (``control``), the one arm every control must beat and that must
over-optimise inside the budget (``floor``), and the paired differences the study reports
(``compare_to``); adding a control or a reported comparison is one edit here.

Three schedules:

    rounds      R rounds of: k samples per train prompt from the arm's current policy -> the
                arm's RM for this round (``train_rm``) -> PPO from the current policy against it.
                Policies ``round<r>`` (the method under test) or ``<arm>_round<r>``.
    continuous  one PPO run of R x ppo.iterations against a fixed reward (``Arm.reward``: r_0,
                the world's gold reward for the ceiling, or a rival RM method's: an ensemble of M
                RMs, their weight average, a centred RM), exported at every round boundary so
                that each round is compared at a matched budget; the critic starts from r_0 in
                every one. ``<arm>@<r>``.
    single      one stage that is not PPO (DPO on the same pairs). Policy ``<arm>``.

This module imports no JAX: ``validate`` runs before anything else does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metarm_jax.runtime.errors import ConfigError

ROUNDS, CONTINUOUS, SINGLE = "rounds", "continuous", "single"
MAIN = "metarm"  # the method under test: always run; its rounds pick the best round
FLOOR = "vanilla_ppo"  # the arm with ``floor=True`` (named here so that entries can refer to it)
# The method with η = 0: every arm with an ascent (MetaRM, its second order, its negative controls)
# lists it in compare_to, and the report measures what each ascent did to the RM against its RM.
NULL_ASCENT = "eta0"
# The rival arms (issue 26): opt-in, each vanilla PPO but for its reward; MetaRM is compared to each.
RIVALS = ("ensemble_mean", "ensemble_worst", "ensemble_uwo", "warm", "centred")
# What a CONTINUOUS arm's PPO optimises (``Arm.reward``): r_0; the world's gold; the aggregation of
# an ensemble of rlhf.ensemble_size RMs (Arm.agg); their weight average (WARM); an RM trained like
# r_0 with reward centring. The one list of reward kinds: metarm_jax/rlhf/rewards.py builds one
# function per name (its ``SOURCES`` is keyed by this tuple, checked when it is imported).
REWARDS = ("rm0", "gold", "ensemble", "warm", "centred", "par")
# the others are an RM of the arm's own (a rival's); PAR shapes r_0's score (no RM of its own)
FIXED_REWARDS = ("rm0", "gold", "par")
# Where a ROUNDS arm's RM starts each round (rlhf.rm_init): the previous round's RM (continued:
# rounds x one pass in all), r_0, or r_0's initialisation (π_SFT's weights and a fresh reward
# head, seeded as r_0's) for one pass: the paper's Figure 4 reading, each round's RM restarted.
RM_INITS = ("previous", "vanilla", "restart")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the experiment.

    name       its key in ``rlhf.baselines`` and in every table of the report
    schedule   ROUNDS, CONTINUOUS or SINGLE (module docstring)
    rm_method  ROUNDS only: the key of its RM-training function in ``rm_methods.METHODS``
    reward     CONTINUOUS only: what PPO optimises, one of ``REWARDS``
    agg        reward "ensemble" only: how the members' scores are aggregated
               (``core.ensemble.AGGREGATIONS``)
    title      how Table 2 names it next to the best round
    needs_world  it reads the synthetic world's gold reward (refused on real data)
    needs_judge  it asks the LLM judge (the ``judge`` block must make one: endpoint, model ...)
    control    a positive control: before any MetaRM number is read, the report checks that it
               beats the floor arm at the end of the budget with a 95% interval above 0
    floor      the arm every positive control must beat, and which must itself over-optimise
               inside the budget (its final gold at least OVEROPTIMISED_DROP below its peak);
               exactly one arm of ``ARMS`` is the floor
    compare_to the arms the study reports this arm's paired difference from (this − other, in
               peak and final gold over seeds); a control's includes the floor
    negative   a negative control of the method: MetaRM with its ascent replaced by the same-size
               step in a direction that should not help (random, on SFT samples, sign-flipped);
               if the paper is right, random ≈ eta0 and sign-flipped ≤ eta0 ≤ MetaRM
    """

    name: str
    schedule: str
    title: str
    rm_method: str = ""
    reward: str = "rm0"
    agg: str = ""
    needs_world: bool = False
    needs_judge: bool = False
    control: bool = False
    floor: bool = False
    compare_to: tuple[str, ...] = ()
    negative: bool = False
    doc: str = ""

    @property
    def rival_reward(self) -> bool:
        """A CONTINUOUS arm whose PPO optimises an RM of its own (an ensemble, WARM, centred)."""
        return self.schedule == CONTINUOUS and self.reward not in FIXED_REWARDS

    @property
    def main(self) -> bool:
        return self.name == MAIN

    def policy(self, r: int | None = None) -> str:
        """The report's name of this arm's policy after round ``r`` (SINGLE: ``r`` unused)."""
        if self.schedule == ROUNDS:
            return f"round{r}" if self.main else f"{self.name}_round{r}"
        if self.schedule == CONTINUOUS:
            return f"{self.name}@{r}"
        return self.name

    def policies(self, rounds: int) -> list[str]:
        if self.schedule == SINGLE:
            return [self.policy()]
        return [self.policy(r) for r in range(1, rounds + 1)]

    def opponents(self, r_best: int, rounds: int) -> dict[str, str]:
        """Table 2's rows for this arm when the best MetaRM round is ``r_best``: label -> policy."""
        if self.main:
            return {}
        if self.schedule == ROUNDS:
            return {f"{self.title} (round {r_best})": self.policy(r_best)}
        if self.schedule == CONTINUOUS:
            out = {f"{self.title} (round {r_best} budget)": self.policy(r_best)}
            if r_best != rounds:
                out[f"{self.title} (full budget, round {rounds})"] = self.policy(rounds)
            return out
        return {self.title: self.policy()}


ARMS: tuple[Arm, ...] = (
    Arm(
        MAIN,
        ROUNDS,
        "MetaRM",
        rm_method="metarm",
        compare_to=(NULL_ASCENT, FLOOR, *RIVALS, "par"),
        doc="MetaRM (eta = meta.eta) on the original pairs, from the previous round's RM",
    ),
    Arm(
        "metarm2",
        ROUNDS,
        "MetaRM second order",
        rm_method="metarm_second",
        compare_to=(NULL_ASCENT, FLOOR, MAIN),
        doc="MetaRM differentiating through the ascent (meta.order='second', hvp form)",
    ),
    Arm(
        "eta0",
        ROUNDS,
        "eta0",
        rm_method="eta0",
        doc="the same rounds with eta = 0: identical data order, seeds, steps, RM continuation",
    ),
    # The negative controls of the ascent (issue 31): MetaRM but for the step's direction.
    Arm(
        "metarm_random",
        ROUNDS,
        "random direction",
        rm_method="metarm_random",
        negative=True,
        compare_to=(NULL_ASCENT, MAIN),
        doc="MetaRM with the ascent replaced by a random Gaussian direction of the same norm, "
        "drawn afresh each step from the step's seeded key (meta.direction='random')",
    ),
    Arm(
        "metarm_sft_j",
        ROUNDS,
        "J on SFT samples",
        rm_method="metarm_sft_j",
        negative=True,
        compare_to=(NULL_ASCENT, MAIN),
        doc="MetaRM with J computed every round on π_SFT's samples (round 1's meta samples) "
        "instead of the current policy's: an ascent that ignores the shift",
    ),
    Arm(
        "metarm_descent",
        ROUNDS,
        "sign-flipped ascent",
        rm_method="metarm_descent",
        negative=True,
        compare_to=(NULL_ASCENT, MAIN),
        doc="MetaRM with the step reversed: descent on J, the same size (meta.direction="
        "'descent', allowed only as this arm)",
    ),
    Arm(
        "oracle",
        ROUNDS,
        "oracle",
        rm_method="oracle",
        needs_world=True,
        control=True,
        compare_to=(FLOOR,),
        doc="continues its RM on every round's gold-labelled pairs of its own policy's samples "
        "plus the original pairs and earlier rounds' (replay), the same RM steps",
    ),
    Arm(
        "relabel",
        ROUNDS,
        "LLM relabelling",
        rm_method="relabel",
        needs_judge=True,
        doc="the oracle of real data, and its costly upper bound: continues its RM on every "
        "round's pairs of its own policy's samples labelled by the LLM judge (both orders; "
        "ties and order-flips dropped) plus the original pairs and earlier rounds' (replay), "
        "the same RM steps",
    ),
    Arm(
        "ceiling",
        CONTINUOUS,
        "ceiling (PPO on gold)",
        reward="gold",
        needs_world=True,
        control=True,
        compare_to=(FLOOR,),
        doc="PPO on the world's gold reward itself for the whole budget (critic from r_0)",
    ),
    Arm(
        FLOOR,
        CONTINUOUS,
        "vanilla PPO",
        floor=True,
        doc="PPO against r_0 for the whole budget",
    ),
    # The rivals (RIVALS): opt-in, each vanilla PPO but for its reward.
    Arm(
        "ensemble_mean",
        CONTINUOUS,
        "ensemble mean",
        reward="ensemble",
        agg="mean",
        compare_to=(FLOOR,),
        doc="PPO against the mean of M RMs (r_0 and M-1 more from π_SFT, other seeds and data "
        "order; each standardised on its validation pairs), the whole budget",
    ),
    Arm(
        "ensemble_worst",
        CONTINUOUS,
        "ensemble worst case",
        reward="ensemble",
        agg="min",
        compare_to=(FLOOR,),
        doc="the same ensemble, PPO against the minimum over members (WCO, Coste et al.)",
    ),
    Arm(
        "ensemble_uwo",
        CONTINUOUS,
        "ensemble UWO",
        reward="ensemble",
        agg="uwo",
        compare_to=(FLOOR,),
        doc="the same ensemble, PPO against mean - λ·variance over members (UWO, Coste et al.; "
        "λ = ppo.ensemble_lambda)",
    ),
    Arm(
        "warm",
        CONTINUOUS,
        "WARM",
        reward="warm",
        compare_to=(FLOOR,),
        doc="PPO against the element-wise weight average of the ensemble's M RMs (WARM, Ramé "
        "et al.)",
    ),
    Arm(
        "centred",
        CONTINUOUS,
        "reward centring",
        reward="centred",
        compare_to=(FLOOR,),
        doc="PPO against an RM trained as r_0 plus η·mean((r_w + r_l)²) (η = "
        "rlhf.center_rewards; Eisenstein et al.)",
    ),
    Arm(
        "par",
        CONTINUOUS,
        "PAR",
        reward="par",
        compare_to=(FLOOR,),
        doc="PPO against r_0 shaped as preference as reward: the mean of σ(r_0(x, y) − r_0(x, "
        "y_ref)) over references sampled from π_SFT each iteration (Fu et al. 2025)",
    ),
    Arm("dpo", SINGLE, "dpo", doc="DPO on the same preference pairs"),
)
BY_NAME = {a.name: a for a in ARMS}
BASELINES = tuple(a.name for a in ARMS if not a.main)
CONTROLS = tuple(a.name for a in ARMS if a.control)  # the positive controls, in ARMS order
NEGATIVE_CONTROLS = tuple(a.name for a in ARMS if a.negative)


def comparisons(names) -> list[tuple[str, str]]:
    """The paired differences (a, b) = a − b the study reports among the arms ``names``: each
    arm's ``compare_to``, in ``ARMS`` order."""
    have = set(names)
    return [(a.name, b) for a in ARMS for b in a.compare_to if a.name in have and b in have]


def _check_table() -> None:
    """The table's own consistency, checked when this module is imported (a wrong entry is a
    programming error, not a user's)."""
    floors = [a.name for a in ARMS if a.floor]
    problems = [f"exactly one floor arm, {FLOOR!r}; got {floors}"] if floors != [FLOOR] else []
    if len(BY_NAME) != len(ARMS):
        problems.append("arm names must be unique")
    if set(RIVALS) != {a.name for a in ARMS if a.rival_reward}:
        problems.append("RIVALS must name every arm whose reward is an RM of its own")
    for a in ARMS:
        if not set(a.compare_to) <= set(BY_NAME) - {a.name}:
            problems.append(f"{a.name}.compare_to names an unknown arm or itself")
        if a.control and FLOOR not in a.compare_to:
            problems.append(f"the control {a.name} must be compared to the floor {FLOOR}")
        if a.schedule == CONTINUOUS and a.reward not in REWARDS:
            problems.append(f"{a.name}.reward {a.reward!r} is not in {REWARDS}")
    if problems:
        raise RuntimeError("metarm_jax/rlhf/plan.py, ARMS: " + "; ".join(problems))


_check_table()


def arms(config) -> list[Arm]:
    """The arms this run trains, in ``ARMS`` order: the method and ``rlhf.baselines``."""
    chosen = set(config.rlhf.baselines)
    return [a for a in ARMS if a.main or a.name in chosen]


def validate(config) -> None:
    """The rlhf stage's checks of its arms and rounds (``stages.VALIDATORS``: run by
    ``config_lib.validate`` before any stage; the judge, the prompt splits and the inputs are
    checked there too, ``config_lib._check_rlhf``). ConfigError, one line."""
    rc = config.rlhf
    if rc.rounds < 1:
        raise ConfigError(f"config.rlhf.rounds={rc.rounds}: at least one round.")
    if rc.rm_init not in RM_INITS:
        raise ConfigError(f"config.rlhf.rm_init={rc.rm_init!r}; expected one of {RM_INITS}.")
    if rc.meta_prompts not in ("train", "ood"):
        raise ConfigError(
            f"config.rlhf.meta_prompts={rc.meta_prompts!r}; expected 'train' or 'ood'."
        )
    if rc.meta_prompts == "ood" and not rc.ood_prompt_path and not rc.world:
        raise ConfigError(
            "config.rlhf.meta_prompts='ood' needs config.rlhf.ood_prompt_path (a hub "
            "name or a local copy of the OOD prompt set)."
        )
    unknown = sorted(set(rc.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(
            f"config.rlhf.baselines: unknown {unknown}; expected a subset of {list(BASELINES)}."
        )
    for arm in arms(config):
        if arm.needs_judge:
            from metarm_jax.eval.llm_judge import JudgeSettings  # numpy only, no JAX

            try:
                JudgeSettings.from_config(config.judge)
            except ConfigError as e:
                raise ConfigError(
                    f"config.rlhf.baselines: {arm.name!r} labels pairs with the LLM judge, "
                    f"which is not usable: {e}"
                ) from None
        if arm.needs_world and not rc.world:
            raise ConfigError(
                f"config.rlhf.baselines: {arm.name!r} needs the synthetic world's gold reward "
                "(config.rlhf.world=True); drop it for real data."
            )
    if rc.valid_prompts < 1 or rc.eval_prompts < 1 or rc.eval_k < 2:
        raise ConfigError(
            f"config.rlhf: valid_prompts={rc.valid_prompts} and eval_prompts={rc.eval_prompts} "
            f"must be >= 1 and eval_k={rc.eval_k} >= 2 (the RM metrics compare responses of "
            "the same prompt)."
        )


# --------------------------------------------------------------------------------------------
# What a run produced: the driver fills these, the report reads them.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Round:
    """One round of a ROUNDS arm."""

    round: int
    policy: str  # the PPO export
    rm: str  # the RM export PPO optimised
    meta: str  # the meta samples the round's RM saw
    rm_metrics: str  # the RM stage's metrics.jsonl
    rm_steps: int
    ppo_metrics: str  # the PPO stage's metrics.jsonl
    ppo_iterations: int
    judge: dict = dataclasses.field(default_factory=dict)  # relabel: the round's judge costs


@dataclasses.dataclass
class ArmRun:
    arm: Arm
    rounds: list[Round] = dataclasses.field(default_factory=list)  # ROUNDS
    at_round: dict[int, str] = dataclasses.field(default_factory=dict)  # CONTINUOUS: r -> export
    final: str = ""  # CONTINUOUS and SINGLE: the last export
    ppo_metrics: str = ""  # CONTINUOUS
    steps: int = 0  # SINGLE: its optimizer steps
    # CONTINUOUS: the RM exports that score every roll-out (one; M for an ensemble, aggregated
    # by arm.agg; () for the gold reward) and the RM training steps behind the arm (every RM it
    # reads, r_0 included: the critic starts from it); None: r_0's alone.
    rms: tuple[str, ...] = ()
    rm_steps: int | None = None

    def policy_paths(self, sft: str) -> dict[str, str]:
        """Report name -> HF export of every policy of this arm."""
        a = self.arm
        if a.schedule == ROUNDS:
            return {a.policy(x.round): x.policy for x in self.rounds}
        if a.schedule == CONTINUOUS:
            return {a.policy(r): p for r, p in self.at_round.items()}
        return {a.policy(): self.final}

    def rm_at(self, r: int) -> str:
        return self.rounds[r - 1].rm

    def reward(self, rm0: str) -> str | tuple[tuple[str, ...], str] | None:
        """What a CONTINUOUS arm's PPO optimised: an RM export, (member exports, aggregation)
        for an ensemble, or None for the gold reward."""
        if self.arm.reward == "gold":
            return None
        if self.arm.reward == "ensemble":
            return (self.rms, self.arm.agg)
        return self.rms[0] if self.rms else rm0


@dataclasses.dataclass
class RunRecord:
    """The products of a run that the report reads."""

    sft: str
    rm0: str
    rm0_steps: int
    rm0_metrics: str  # "" when r_0 was given (rlhf.rm_path)
    ppo_iterations: int  # per round
    rounds: int
    arms: dict[str, ArmRun]

    @property
    def main(self) -> ArmRun:
        return self.arms[MAIN]

    def of(self, schedule: str) -> list[ArmRun]:
        return [a for a in self.arms.values() if a.arm.schedule == schedule]

    def policies(self) -> dict[str, str]:
        """Report name -> export of every policy, in report order (SFT first)."""
        out = {"sft": self.sft}
        for run in self.arms.values():
            out.update(run.policy_paths(self.sft))
        return out


def describe(config) -> list[dict[str, Any]]:
    """The plan as rows (README, the report's header)."""
    return [
        {"arm": a.name, "schedule": a.schedule, "rm": a.rm_method or a.reward, "what": a.doc}
        for a in arms(config)
    ]
