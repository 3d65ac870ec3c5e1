"""The directory tree of one rlhf run: every step's directory and every file a later step or the
report reads, named once here for writer and reader alike.

    world/            the synthetic world's files (quickstart) and paths.json
    tokenizer/        a BPE tokenizer trained on the pairs (rlhf.tokenizer_vocab, real data)
    sft/  rm/         π_SFT and r_0 (stage directories: metarm_jax/runtime/layout.py)
    round<r>/         the method's round r: meta/ + meta.jsonl, metarm/ (its RM), ppo/
    <arm>/round<r>/   the same for every other ROUNDS arm (round 1's meta samples are shared)
    vanilla_ppo/  dpo/    the CONTINUOUS and SINGLE arms
    rm_ensemble/member<i>/  rm_ensemble/warm/   the rival arms' RMs: members 1..M-1 of the
                          ensemble (member 0 is r_0: rm/), their weight average (WARM)
    rm_centred/           the centred arm's RM
    samples/test/<policy>.jsonl, samples/valid/<policy>.jsonl    evaluation samples
    report.md  report.json  fig*.png   the report
"""

from __future__ import annotations

import dataclasses
import os

from metarm_jax.rlhf.plan import Arm


@dataclasses.dataclass(frozen=True)
class RunLayout:
    root: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    world = "world"
    tokenizer = "tokenizer"
    sft = "sft"
    rm0 = "rm"

    def world_paths(self) -> str:
        return self.path(self.world, "paths.json")

    def arm_dir(self, arm: Arm) -> str:
        """Relative directory of an arm's steps ("" for the method under test)."""
        return "" if arm.main else arm.name

    def round_dir(self, arm: Arm, r: int) -> str:
        return os.path.join(self.arm_dir(arm), f"round{r}")

    def meta_step(self, arm: Arm, r: int) -> str:
        """Round 1's meta samples come from π_SFT with the same keys in every arm: one step."""
        return os.path.join("round1" if r == 1 else self.round_dir(arm, r), "meta")

    def meta_file(self, arm: Arm, r: int) -> str:
        return self.path(os.path.dirname(self.meta_step(arm, r)), "meta.jsonl")

    def rm_step(self, arm: Arm, r: int, stage: str) -> str:
        return os.path.join(self.round_dir(arm, r), stage)

    def ppo_step(self, arm: Arm, r: int) -> str:
        return os.path.join(self.round_dir(arm, r), "ppo")

    def single_step(self, arm: Arm) -> str:
        """The one step of a CONTINUOUS or SINGLE arm."""
        return arm.name

    def member_step(self, i: int) -> str:
        """Member i of the RM ensemble (member 0 is r_0, unless r_0 was given: rlhf.rm_path)."""
        return os.path.join("rm_ensemble", f"member{i}")

    warm_step = os.path.join("rm_ensemble", "warm")
    centred_step = "rm_centred"

    def sample_step(self, split: str, policy: str) -> str:
        return os.path.join("samples", split, policy)

    def sample_file(self, split: str, policy: str) -> str:
        return self.path("samples", split, f"{policy}.jsonl")

    def report(self, name: str) -> str:
        return self.path(name)
