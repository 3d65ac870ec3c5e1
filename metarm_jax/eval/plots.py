"""The report's figures (matplotlib, headless): each function draws one PNG into the workdir and
returns its file name."""

from __future__ import annotations

import os

import numpy as np


def _plt(workdir: str):
    """matplotlib.pyplot, headless, imported on first use; its font cache goes under the run's
    workdir (MPLCONFIGDIR) unless the user set one, so nothing is written outside the run."""
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.path.abspath(workdir), ".matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SHIFT_VAR = "shift/absdiff_var"  # logged by the ppo stage every iteration
PPO_X = "rollout/stream_iteration"  # the arm's PPO iterations so far (rounds back to back)
PROXY, GOLD = "rollout/score_mean", "rollout/monitor_mean"


def series(rows: list[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [(r.get(x, i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), int | float)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s, float), np.asarray(v, float)


def _save(fig, workdir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=100)
    _plt(workdir).close(fig)
    return name


def _style(name: str) -> dict:
    if name.startswith("vanilla"):
        return {"ls": "--", "color": "black"}
    if name.startswith("eta0"):
        return {"ls": ":"}
    return {"ls": "-"}


def shift_variance(workdir: str, ppo_rows: dict[str, list[dict]]) -> str:
    """Figure 1: variance of within-prompt reward differences over each arm's PPO iterations."""
    plt = _plt(workdir)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rows in ppo_rows.items():
        s, v = series(rows, SHIFT_VAR, PPO_X)
        if len(s):
            ax.plot(s, v, label=name, **_style(name))
    ax.set_xlabel("PPO iteration of the arm (rounds back to back)")
    ax.set_ylabel("var of within-prompt reward differences")
    ax.set_title("Figure 1: reward-difference variance over PPO")
    ax.legend(fontsize=7)
    return _save(fig, workdir, "fig1_reward_diff_variance.png")


def checkpoint_variance(workdir: str, fig1: dict[str, dict]) -> str:
    """Figure 1 as the paper draws it: var of r(x, y1) - r(x, y2) at each PPO checkpoint."""
    plt = _plt(workdir)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, d in fig1.items():
        ax.plot(d["iteration"], d["variance"], marker="o", label=name, **_style(name))
    ax.set_xlabel("PPO iterations of the arm (checkpoints: SFT, end of each round)")
    ax.set_ylabel("var of r(x, y1) - r(x, y2) over test prompts")
    ax.set_title("Figure 1 (paper): reward-difference variance at each checkpoint")
    ax.legend(fontsize=7)
    return _save(fig, workdir, "fig1_checkpoint_variance.png")


def win_rates(workdir: str, groups: dict[str, dict[str, dict]], title: str) -> str:
    """Stacked win / tie / lose bars per round, one panel per opponent (Figure 3)."""
    plt = _plt(workdir)
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5.5 * max(len(groups), 1), 4))
    axes = np.atleast_1d(axes)
    for ax, (opponent, rows) in zip(axes, groups.items()):
        names = list(rows)
        x = np.arange(len(names))
        bottom = np.zeros(len(names))
        for key, color in (("win", "tab:green"), ("tie", "tab:gray"), ("lose", "tab:red")):
            v = np.asarray([rows[n][key] / max(rows[n]["n"], 1) for n in names])
            ax.bar(x, v, bottom=bottom, color=color, label=key)
            bottom += v
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1)
        ax.set_title(opponent)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, workdir, "fig3_win_rates.png")


def rm_accuracy(workdir: str, rm_rows: dict[str, list[dict]]) -> str:
    """Figure 4: each RM's validation accuracy over its training steps."""
    plt = _plt(workdir)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rows in rm_rows.items():
        s, v = series(rows, "eval/accuracy")
        if len(s):
            ax.plot(s, v, marker="o", label=name, **_style(name))
    ax.set_xlabel("RM training step (within its stage)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Figure 4: RM accuracy per round")
    ax.legend(fontsize=7)
    return _save(fig, workdir, "fig4_rm_accuracy.png")


def reward_differences(workdir: str, diffs: dict[str, dict[str, np.ndarray]]) -> str:
    """Figure 5: |Δr| on the final policy's samples, raw and divided by the spread of r."""
    plt = _plt(workdir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, xlabel in (
        (axes[0], "raw", "|r(x, s_i) - r(x, s_j)|"),
        (axes[1], "normalised", "|r(x, s_i) - r(x, s_j)| / std(r on these samples)"),
    ):
        hi = max((float(d[key].max(initial=0)) for d in diffs.values()), default=1.0) or 1.0
        bins = np.linspace(0, hi, 31)
        for name, d in diffs.items():
            ax.hist(d[key], bins=bins, alpha=0.5, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        ax.legend(fontsize=7)
    axes[0].set_title("Figure 5: reward differences on the final policy's samples")
    axes[1].set_title("the same, on a common scale (step-matched RMs)")
    return _save(fig, workdir, "fig5_reward_diff_hist.png")


def rewards(
    workdir: str, gold: dict[str, tuple[float, float, float]], ppo_rows: dict[str, list[dict]]
) -> str:
    """Mean gold of every policy with its 95% interval, and proxy / gold over PPO."""
    plt = _plt(workdir)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    if gold:
        names = list(gold)
        mean = np.asarray([gold[n][0] for n in names])
        err = np.abs(np.asarray([[gold[n][1], gold[n][2]] for n in names]).T - mean)
        a1.bar(np.arange(len(names)), mean, yerr=err, capsize=3)
        a1.set_xticks(np.arange(len(names)), names, rotation=60, fontsize=7)
        a1.set_title("mean gold reward of test samples (95% interval)")
    for name, rows in ppo_rows.items():
        s, v = series(rows, PROXY, PPO_X)
        line = a2.plot(s, v, label=f"{name} proxy", **_style(name))[0] if len(s) else None
        s, v = series(rows, GOLD, PPO_X)
        if len(s):
            color = line.get_color() if line else None
            a2.plot(s, v, ls=":", color=color, label=f"{name} gold")
    a2.set_xlabel("PPO iteration of the arm")
    a2.set_title("reward over PPO (proxy: the RM PPO optimises)")
    a2.legend(fontsize=6)
    return _save(fig, workdir, "fig_rewards.png")


def frontier(
    workdir: str,
    curves: dict[str, list[dict]],
    fits: dict[str, dict],
    file_name: str = "fig_frontier.png",
) -> str:
    """Gao et al.'s frontier: gold (solid, with the fitted R = d(α − β log d) dotted) and proxy
    (dashed, its own axis: RM units) against d = √KL(π‖π_SFT) at every export of every arm."""
    plt = _plt(workdir)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, pts in curves.items():
        d = np.asarray([p["sqrt_kl"] for p in pts])
        g = np.asarray([p["gold"] for p in pts])
        line = a1.plot(d, g, marker="o", ms=3, label=name, **_style(name))[0]
        fit = fits.get(name, {})
        if np.isfinite(fit.get("beta", np.nan)) and d.max() > 0:
            x = np.linspace(1e-3, d.max(), 50)
            base = g[d == 0].mean() if np.any(d == 0) else 0.0
            a1.plot(x, base + x * (fit["alpha"] - fit["beta"] * np.log(x)), ":", lw=1,
                    color=line.get_color())  # fmt: skip
        p = [q["proxy"] for q in pts]
        if all(v is not None for v in p):
            a2.plot(d, p, marker="o", ms=3, label=name, color=line.get_color(), ls="--")
    a1.set_xlabel("√KL(π ‖ π_SFT)")
    a1.set_ylabel("gold reward (test prompts)")
    a1.set_title("gold against √KL (dotted: fitted d(α − β log d))")
    a1.legend(fontsize=7)
    a2.set_xlabel("√KL(π ‖ π_SFT)")
    a2.set_ylabel("proxy: the RM the arm optimised")
    a2.set_title("proxy against √KL")
    a2.legend(fontsize=7)
    return _save(fig, workdir, file_name)
