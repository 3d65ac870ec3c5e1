"""Iterative RLHF end to end: the quickstart's fast variant as a user runs it, its report, its
dependence on the seed, and resume after SIGKILL in round 2's PPO."""

import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from metarm_jax.runtime.errors import PREEMPTED_EXIT_CODE
from tests.conftest import REPO
from tests.xla_env import xla_flags

FAST = "--config=configs/quickstart.py:fast=1"


# Smaller sizes for a run that only has to show its numbers move (the steps all still run).
SMALL = [
    "--config.world.num_sft=256", "--config.world.num_train_pairs=256",
    "--config.world.num_train_prompts=64", "--config.sft.steps=6", "--config.sft.val_holdout=64",
    "--config.train.steps=8", "--config.train.eval_every=8", "--config.ppo.iterations=2",
    "--config.rlhf.diversity=",
]  # fmt: skip


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))


def _run(workdir, *args, timeout=900):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarm_jax.main",
            FAST,
            f"--workdir={workdir}",
            "--config.train.progress=False",
            *args,
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def seed0(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seed0")
    res = _run(workdir)
    return workdir, res.stdout


def _report(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "report.json").read_text())


def test_quickstart_report_has_every_table_and_figure(seed0):
    workdir, stdout = seed0
    md = (workdir / "report.md").read_text()
    # the controls come first: nothing of MetaRM is shown before them
    assert md.index("## Can this experiment discriminate?") < md.index("## In plain words")
    for heading in (
        "## In plain words",
        "## Selection (validation prompts)",
        "## Table 1 (test prompts)",
        "## Table 2 (test prompts)",
        "## Mean gold reward of the test samples",
        "## RM metrics",
        "## Budgets, clipping and the meta step",
        "## Example responses",
        "Figure 1",
        "Figure 4",
        "Figure 5",
    ):
        assert heading in md, heading
    for png in (
        "fig1_reward_diff_variance.png",
        "fig1_checkpoint_variance.png",
        "fig3_win_rates.png",
        "fig4_rm_accuracy.png",
        "fig5_reward_diff_hist.png",
        "fig_rewards.png",
        "fig_frontier.png",
    ):
        assert (workdir / png).stat().st_size > 10_000, png  # a real plot, not an empty canvas
        assert f"]({png})" in md
    rep = _report(workdir)
    n = rep["prompts"]
    assert n == 32 and rep["valid_prompts"] == 32 and rep["samples_per_prompt"] == 4
    assert len(rep["examples"]) == 3 and {"sft", "round1", "ceiling@1"} <= set(
        rep["examples"][0]["responses"]
    )
    assert set(rep["table1"]) == {
        "round1", "round2", "eta0_round1", "eta0_round2", "oracle_round1", "oracle_round2"
    }  # fmt: skip
    best = rep["best_round"]
    r = best.removeprefix("round")
    assert {
        "sft", f"eta0 (round {r})", f"oracle (round {r})", f"vanilla PPO (round {r} budget)",
        f"ceiling (PPO on gold) (round {r} budget)",
    } <= set(rep["table2"])  # fmt: skip
    for table in ("selection", "table1", "table2"):
        for row in rep[table].values():
            assert row["win"] + row["tie"] + row["lose"] == row["n"]
            lo, hi = row["net_ci"]
            assert lo <= row["net"] <= hi  # the interval holds its point estimate
    assert rep["table1"][best] == rep["table2"]["sft"]  # the same comparison, once per table
    assert set(rep["gold"]) == {
        "sft", "round1", "round2", "eta0_round1", "eta0_round2", "oracle_round1",
        "oracle_round2", "ceiling@1", "ceiling@2", "vanilla_ppo@1", "vanilla_ppo@2",
    }  # fmt: skip
    # every arm's budget is stated; eta0, the oracle and MetaRM have the same RM and PPO steps
    assert rep["budget"]["metarm"] == rep["budget"]["eta0"] == rep["budget"]["oracle"]
    assert rep["budget"]["ceiling"] == rep["budget"]["vanilla_ppo"]
    # the controls, every arm's frontier and its RM's accuracy on its own samples
    c = rep["controls"]
    assert set(c) == {"overoptimised", "ceiling_minus_vanilla", "oracle_minus_vanilla",
                      "discriminates"}  # fmt: skip
    assert c["discriminates"] == (
        c["overoptimised"]["passed"]
        and c["ceiling_minus_vanilla"]["passed"]
        and c["oracle_minus_vanilla"]["passed"]
    )
    assert set(rep["curves"]) == {"metarm", "eta0", "oracle", "ceiling", "vanilla_ppo"}
    for _arm, pts in rep["curves"].items():
        assert [p["round"] for p in pts] == [0, 1, 2] and pts[0]["sqrt_kl"] == 0.0
        assert [p["iteration"] for p in pts] == [0, 3, 6]
        assert pts[0]["gold"] == rep["curves"]["metarm"][0]["gold"]  # π_SFT for every arm
        assert all(p["sqrt_kl"] >= 0 for p in pts) and pts[2]["sqrt_kl"] > 0
    assert all(p["proxy"] == p["gold"] for p in rep["curves"]["ceiling"][1:])  # PPO on gold
    assert set(rep["rm_on_policy_accuracy"]) == {"metarm", "eta0", "oracle", "vanilla_ppo"}
    assert all(
        set(v) == {"round1", "round2"} and all(0 <= a <= 1 for a in v.values())
        for v in rep["rm_on_policy_accuracy"].values()
    )
    assert (
        rep["budget"]["vanilla_ppo"]["ppo_iterations"] == rep["budget"]["metarm"]["ppo_iterations"]
    )
    assert rep["rm_metrics"]["reference"] == "gold"
    assert rep["fig1"]["metarm"]["iteration"] == [0, 3, 6]  # SFT, then each round's end
    assert rep["fig1"]["vanilla_ppo"]["iteration"] == [0, 3, 6]
    assert all(v >= 0 for d in rep["fig1"].values() for v in d["variance"])
    assert set(rep["lengths"]) == set(rep["gold"]) and rep["diversity"]["rows"]
    row = rep["rm_metrics"]["rounds"]["round2"]["metarm round 2 samples"]
    assert set(row) == {"r0", "metarm_r2", "eta0_r2", "oracle_r2"}
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in row.values())
    # the console ends with the tables
    assert "Table 1 (test)" in stdout and "Table 2 (test)" in stdout
    # the PPO stage logged the shift signal, the gold reward and the clipped fraction each
    # iteration; the MetaRM stage the step's geometry each step
    rows = [json.loads(l) for l in (workdir / "round1/ppo/ppo/metrics.jsonl").open()]
    for key in ("shift/absdiff_var", "rollout/monitor_mean", "rollout/reward_clip_frac"):
        assert sum(key in r for r in rows) == 3, key
    rows = [json.loads(l) for l in (workdir / "round1/metarm/metarm/metrics.jsonl").open()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 40
    for key in (
        "meta/ascent_norm", "update_norm", "meta/ascent_to_update", "meta/cos_gradJ_grad",
        "meta/J", "meta/J_prime",
    ):  # fmt: skip
        assert all(key in r for r in steps), key
    # the calibrated ascent (meta.eta_mode='update', ρ = meta.eta): each step's ascent is ρ times
    # the previous step's optimizer update; the first step has none
    rho = _config(workdir / "round1/metarm/config.json")["meta.eta"]
    assert _config(workdir / "round1/metarm/config.json")["meta.eta_mode"] == "update"
    assert steps[0]["meta/ascent_norm"] == 0.0
    for prev, cur in itertools.pairwise(steps):
        assert cur["meta/ascent_norm"] == pytest.approx(rho * prev["update_norm"], rel=1e-3)


def _prompts_of(workdir, stage) -> list[list[int]]:
    rows = [json.loads(l) for l in (workdir / stage / "ppo" / "metrics.jsonl").open()]
    return [
        [int(i) for i in r["rollout/prompt_index"]] for r in rows if "rollout/prompt_index" in r
    ]


def test_each_round_trains_on_fresh_prompts_of_one_stream(seed0):
    """Round 2's PPO continues the prompt stream where round 1 stopped (no prompt twice in 96
    of 400), and vanilla PPO walks the same stream: its iterations 3-5 are round 2's prompts."""
    workdir, _ = seed0
    r1, r2 = _prompts_of(workdir, "round1/ppo"), _prompts_of(workdir, "round2/ppo")
    assert len(r1) == len(r2) == 3
    seen1, seen2 = {i for b in r1 for i in b}, {i for b in r2 for i in b}
    assert len(seen1) == len(seen2) == 48 and not seen1 & seen2
    vanilla = _prompts_of(workdir, "vanilla_ppo")
    assert vanilla[:3] == r1 and vanilla[3:6] == r2
    assert _prompts_of(workdir, "eta0/round2/ppo") == r2  # the control arm: the same prompts


def _config(path) -> dict:
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    return dict(flat(json.loads(pathlib.Path(path).read_text())))


def test_the_control_arm_differs_from_metarm_only_in_eta(seed0):
    workdir, _ = seed0

    def diff(a, b):
        a, b = _config(workdir / a / "config.json"), _config(workdir / b / "config.json")
        return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}

    # round 1: the same start (r_0), the same meta samples: only η (and the folder) differ
    assert diff("round1/metarm", "eta0/round1/metarm") == {"meta.eta", "workdir"}
    # later rounds continue each arm's own RM and policy, sampled from that arm's policy (the
    # three keys that inherit model.hf_path follow it; the metarm stage does not read them)
    assert diff("round2/metarm", "eta0/round2/metarm") == {
        "meta.eta", "workdir", "model.hf_path", "data.meta_path",
        "build_meta.policy_path", "ppo.policy_path", "ppo.ref_path",
    }  # fmt: skip
    ppo = diff("round2/ppo", "eta0/round2/ppo")
    assert ppo == {"workdir", "ppo.policy_path", "ppo.rm_path", "ppo.critic_path"}
    eta0 = _config(workdir / "eta0/round2/metarm/config.json")
    assert (
        eta0["meta.eta"] == 0.0 and _config(workdir / "round2/metarm/config.json")["meta.eta"] > 0
    )


def test_the_best_round_is_chosen_on_validation_prompts_only(seed0):
    from metarm_jax.data import DataSource, load
    from metarm_jax.rlhf import compute

    workdir, _ = seed0
    rep = _report(workdir)
    assert rep["best_round"] == compute.select_best(rep["selection"])
    valid = {
        e.prompt
        for e in load("meta", DataSource.of("meta", str(workdir / "samples/valid/round1.jsonl")))
    }
    test = {
        e.prompt
        for e in load("meta", DataSource.of("meta", str(workdir / "samples/test/round1.jsonl")))
    }
    assert len(valid) == len(test) == 32 and not valid & test
    world = {json.loads(l)["prompt"] for l in (workdir / "world/prompts/valid.jsonl").open()}
    assert all(p.split("Human: ")[1].split("\n")[0] in world for p in valid)


def test_numbers_come_from_the_run_and_change_with_the_seed(seed0, tmp_path):
    workdir, _ = seed0
    # one round and the oracle arm only: enough to see the numbers move with the seed (and to
    # run the oracle arm: an RM on gold-labelled pairs of the policy's own samples)
    _run(tmp_path, "--config.seed=1", "--config.world.seed=1", "--config.rlhf.rounds=1",
         "--config.rlhf.baselines=('oracle',)", *SMALL)  # fmt: skip
    a, b = _report(workdir), _report(tmp_path)
    assert a["gold"]["sft"] != b["gold"]["sft"] and a["gold"]["round1"] != b["gold"]["round1"]
    assert "oracle_round1" in b["gold"] and "oracle (round 1)" in b["table2"]
    pairs = tmp_path / "oracle/round1/oracle_pairs"
    rows = [json.loads(r) for r in (pairs / "gold.jsonl").read_text().splitlines()]
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows)  # labelled by gold
    # the oracle keeps the original pairs and adds its rounds' gold pairs (replay)
    original = (tmp_path / "world/pairs/train.jsonl").read_text()
    train = (pairs / "train.jsonl").read_text()
    assert len(train.splitlines()) == len(original.splitlines()) + len(rows)
    assert a["table1"]["round1"] != b["table1"]["round1"] or a["selection"] != b["selection"]


def _copy_before_round2_ppo(workdir, run, also=frozenset()) -> None:
    """Copy a finished run as it stood before round 2's PPO: without that step, what came after
    it (round 2's samples, the report and its figures) and the paths in ``also``."""
    after = {"round2/ppo", "report.md", "report.json", *also} | {
        f"samples/{split}/round2{ext}"
        for split in ("test", "valid")
        for ext in ("", ".jsonl", ".jsonl.chunks")
    }
    shutil.copytree(workdir, run, ignore=lambda d, names: [
        n for n in names if os.path.relpath(os.path.join(d, n), workdir) in after
        or n.endswith(".png")
    ])  # fmt: skip


def test_killed_in_round2_ppo_resumes_to_the_same_report(seed0, tmp_path):
    """Start from seed0's finished steps but round 2's PPO and what depends on it (round 2's
    samples, the report), run on with a checkpoint every PPO iteration, SIGKILL the run once
    round 2's PPO has one, run the same command again: the report equals seed0's, every number
    and interval. (The other arms do not depend on round 2's policy: they are kept.)"""
    workdir, _ = seed0
    run = tmp_path / "run"
    _copy_before_round2_ppo(workdir, run, {"samples/kl/round2.json"})
    cmd = [
        sys.executable,
        "-m",
        "metarm_jax.main",
        FAST,
        f"--workdir={run}",
        "--config.train.progress=False",
        "--config.ppo.save_every=1",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = run / "round2" / "ppo" / "ppo" / "checkpoints"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before round 2's PPO wrote a checkpoint"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (run / "round2" / "ppo" / "DONE.json").exists()
    res = _run(run, "--config.ppo.save_every=1")
    assert "-- rlhf: round1" not in res.stdout  # finished steps are not run again
    assert "resuming ppo from" in res.stdout
    a, b = _report(workdir), _report(run)
    assert a == b  # every number and interval, bit for bit


def test_finished_steps_keep_their_exports_and_drop_their_checkpoints(seed0):
    """rlhf.keep_checkpoints=False (default): no step leaves a checkpoint folder, every step
    that exported keeps its export, and the report, Figure 1 as the paper draws it included
    (test_quickstart_report_has_every_table_and_figure), was built without them."""
    workdir, _ = seed0
    assert not sorted(workdir.glob("**/checkpoints"))
    done = sorted(workdir.glob("**/DONE.json"))
    exports = [json.loads(d.read_text()).get("export") for d in done]
    assert len(done) >= 20 and sum(bool(e) for e in exports) >= 10
    for e in filter(None, exports):
        assert (pathlib.Path(e) / "model.safetensors").exists(), e
    assert (workdir / "vanilla_ppo/export/ppo_iter3/model.safetensors").exists()  # round 1 of 2


def test_sigterm_in_round2_ppo_saves_at_an_iteration_and_resumes_to_the_same_report(
    seed0, tmp_path
):
    """As the kill test above, with a preemption notice instead: SIGTERM after the first step
    of round 2's PPO (inside its first iteration of 2 steps): the run saves at the iteration's
    end (step 2), says so in one line and exits 75; the same command resumes and the report
    equals seed0's. A finished step's checkpoints left behind (a run stopped while removing
    them) are removed on the way."""
    workdir, _ = seed0
    run = tmp_path / "run"
    _copy_before_round2_ppo(workdir, run)
    left = run / "round1" / "ppo" / "ppo" / "checkpoints" / "6"
    left.mkdir(parents=True)
    cmd = [sys.executable, "-m", "metarm_jax.main", FAST, f"--workdir={run}",
           "--config.train.progress=False"]  # fmt: skip
    env = dict(_env(), METARM_FAULT="term:train_step:1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == PREEMPTED_EXIT_CODE, res.stderr[-3000:]
    lines = [l for l in res.stderr.splitlines() if l.startswith(("preempted:", "error:"))]
    assert len(lines) == 1 and lines[0].startswith("preempted: ppo stopped after step 2 of 6 ")
    ckpt = run / "round2" / "ppo" / "ppo" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["2"]
    assert not (run / "round2" / "ppo" / "DONE.json").exists()
    assert not left.parent.exists()
    res = _run(run)
    assert "-- rlhf: round1" not in res.stdout  # finished steps are not run again
    assert "resuming ppo from" in res.stdout and "(step 2/6)" in res.stdout
    assert _report(workdir) == _report(run)  # every number and interval, bit for bit
    assert not sorted(run.glob("**/checkpoints"))


def test_hh_rlhf_runlocal_end_to_end_on_the_shared_sample(tmp_path, shared_dir, server):
    """Real data end to end, with the arm that relabels each round's samples by an LLM judge (a
    local OpenAI-compatible server that prefers the longer response)."""
    from tests.conftest import FAKE_JUDGE_KEY

    sample = shared_dir / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    if not sample.exists():
        pytest.skip(f"the shared HH-RLHF sample {sample} is absent (set METARM_SHARED_DIR)")
    env = dict(_env(), METARM_SHARED_DIR=str(shared_dir), METARM_E2E_JUDGE_KEY=FAKE_JUDGE_KEY)
    # runlocal, shortened further for CI: one round, few steps; every stage still runs for real.
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarm_jax.main",
            "--config=configs/hh_rlhf.py:runlocal",
            f"--workdir={tmp_path}",
            "--config.train.progress=False",
            "--config.rlhf.rounds=1",
            "--config.train.steps=10",
            "--config.train.eval_every=10",
            "--config.train.eval_batches=2",
            "--config.sft.epochs=0.1",
            "--config.ppo.iterations=2",
            "--config.dpo.steps=4",
            "--config.build_meta.max_prompts=32",
            "--config.rlhf.eval_prompts=16",
            "--config.rlhf.valid_prompts=16",
            "--config.rlhf.baselines=('eta0','relabel')",
            f"--config.judge.base_url={server}/v1",
            "--config.judge.model=fake-judge",
            "--config.judge.api_key_env=METARM_E2E_JUDGE_KEY",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rep = _report(tmp_path)
    assert rep["prompts"] == 16 and rep["valid_prompts"] == 16
    assert set(rep["table1"]) == {"round1", "eta0_round1", "relabel_round1"}
    b = rep["budget"]["relabel"]  # the judge labelled pairs of round 1's samples (k = 5: 2 each)
    assert b["judge_pairs"] > 0 and b["judge_judgments"] == 2 * b["judge_pairs"]
    assert b["judge_calls"] <= b["judge_judgments"]
    assert b["rm_steps"] == rep["budget"]["eta0"]["rm_steps"]  # the same RM steps as eta0
    labelled = tmp_path / "relabel" / "round1" / "relabel_pairs" / "labelled.jsonl"
    rows = [json.loads(x) for x in labelled.read_text().splitlines()]
    assert len(rows) == b["judge_labelled"] > 0
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in rows)  # the judge's rule
    assert "relabel: the LLM judge was asked" in (tmp_path / "report.md").read_text()
    assert any((tmp_path / "llm_judge_cache").iterdir())  # the judge's cache, in the run
    assert "judge" in rep and "vanilla RM" in rep["judge"]  # no gold reward on real data
    assert rep["diversity"]["rows"]["chosen (data)"]["self_bleu"] > 0  # Table 3 on real text
    assert rep["rm_metrics"]["reference"] is None  # nothing independent to rank against
    # the BPE tokenizer was trained on the local pairs and the 4 empty-response rows were skipped
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert "skipped 4 of 2000 rows: empty_response: 4" in res.stdout
