"""Shared-prompt packing: tokens computed and step time, shared vs unshared, and the unshared job
in HF PyTorch on the same weights, side by side in one run.

    python bench/shared_prompt.py                       # the HH sample and the quickstart world
    python bench/shared_prompt.py --data=hh --reps=3

Data (real length distributions, not random lengths):
  hh          ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz with the SmolLM2 tokenizer
              (runs/smollm2-135m, `python -m metarm_jax.models.pretrained --out ...`), max_length
              256; a meta example is an HH prompt with the responses (chosen and rejected) of k/2
              pairs: real HH response lengths under a real prompt.
  quickstart  the quickstart's synthetic world (configs/quickstart.py), its tokenizer, its
              max_length; meta examples built the same way from its pairs.
Tokens: over every batch of the data (n pairs / m meta prompts per batch), the tokens a step
computes (rows x padded length) and the real ones, unpacked vs packed. Time: the loop's full
jitted train step (grads, clipping, AdamW) on the same batches, median of --reps after a warm-up,
with XLA's FLOP count of each compiled step; PyTorch: LlamaForSequenceClassification with the
same weights, the same unpacked batches, the same job (BT loss; MetaRM first order: ∇J, the
ascent θ' = θ + η∇J, ∇L at θ'), then torch.optim.AdamW, 2 threads.

PPO scoring (``--ppo=1``): a roll-out batch of q prompts x r responses, built from the same data
(each meta example's prompt, the common prefix of its sequences, with r real responses cut to
Tn = --ppo-tn slots), scored by actor, reference (LM heads), critic (value head) and RM (reward
head) as ``train/rollout_scoring.make_score_fn`` does: unpacked rows [prompt | response] against packed
rows [prompt | g responses] (g from ``rollout_scoring.score_group``); torch: the four unpacked forwards
(LlamaForCausalLM twice, then the backbone LlamaModel twice: critic and RM heads are one matmul).
Packed SFT (``--sft=1``): the pairs' chosen sequences as SFT examples, tokens computed per batch of
``--sft-batch`` (rows x padded length), unpacked vs ``packing.pack_examples``, and the SFT step.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from bench.metarm_step import time_train_step
from metarm_jax import models, sharding
from metarm_jax.config import defaults
from metarm_jax.config import lib as config_lib
from metarm_jax.data import features as F
from metarm_jax.data import packing, readers, tokenizer
from metarm_jax.data.records import MetaExample, Records, SamplingInfo, SkipReport
from metarm_jax.models import llama
from metarm_jax.train import loop, optim, rm

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = os.environ.get("METARM_SHARED_DIR", str(ROOT.parent / "shared"))
ETA = 1e-3


def _meta_examples(pairs, k, seed=0):
    """Each pair's prompt with the chosen and rejected responses of k/2 pairs (its own first)."""
    rng = np.random.default_rng(seed)
    info = SamplingInfo(1.0, 1.0, 0, 0, 0, 1.0, 0, "bench")
    out = []
    for i, p in enumerate(pairs):
        others = [i] + list(rng.choice(len(pairs), k // 2 - 1, replace=False))
        responses = [r for j in others for r in (pairs[j].chosen, pairs[j].rejected)]
        out.append(MetaExample(p.prompt, tuple(responses[:k]), info))
    return out


def load(name, args, ks=()):
    """(tokenizer, TokenSpec, pair features, {k: meta features of k responses} for args.k and
    each of ``ks``, vocab size): the data read and its pairs tokenized once."""
    if name == "hh":
        tok = tokenizer.load_tokenizer(args.tokenizer)
        path = os.path.join(SHARED, "data", "hh-rlhf", "harmless-base")
        pairs = readers.load(
            "preference",
            readers.DataSource.of("hh_rlhf", path, split="test", max_skip_fraction=1.0),
        )
        max_length, buckets = args.max_length, (64, 128, 192)
    else:
        from configs import quickstart
        from metarm_jax.data import world_files

        c = quickstart.get_config()
        world = world_files.write_world(tempfile.mkdtemp(prefix="bench-world-"), c.world)
        tok = tokenizer.load_tokenizer(world["tokenizer"])
        pairs = readers.load(
            "preference", readers.DataSource.of("hh_rlhf", world["pairs_train"], split="train")
        )
        max_length, buckets = c.data.max_length, tuple(c.data.bucket_lengths)
    spec = F.TokenSpec(
        max_length,
        F.bucket_lengths(buckets, max_length),
        tok.pad_token_id,
        tok.eos_token_id,
        tok.bos_token_id,
        "right",
    )
    pf = list(F.tokenize_pairs(pairs, tok, spec))  # too-long rows are skipped (and counted)
    mf = {}
    for k in {args.k, *ks}:
        meta = _meta_examples(pairs, k)
        report = SkipReport("meta (bench)", "skip", 1.0)  # too-long examples left out, counted
        report.total = len(meta)
        mf[k] = list(F.tokenize_meta(Records(meta, report), tok, spec))
    return tok, spec, pf, mf, len(tok)


def batches(feats, collate_cls, spec, size, shared, **kw):
    c = collate_cls(spec, **kw)
    c.shared_prompt = shared
    return [c(feats[i : i + size]) for i in range(0, len(feats) - size + 1, size)]


def token_counts(pf, mf, spec, args):
    """{kind: (computed unpacked, computed packed, real unpacked, real packed)} over the data."""
    out = {}
    for kind, feats, cls, size, kw in (
        ("pairs", pf, F.CollatePairs, args.n, {}),
        ("meta", mf, F.CollateMeta, args.m, {"k": args.k}),
    ):
        un = batches(feats, cls, spec, size, False, **kw)
        pk = batches(feats, cls, spec, size, True, **kw)
        if kind == "pairs":
            cu = sum(b["chosen_ids"].size + b["rejected_ids"].size for b in un)
            ru = sum(int(b["chosen_mask"].sum() + b["rejected_mask"].sum()) for b in un)
        else:
            cu = sum(b["input_ids"].size for b in un)
            ru = sum(int(b["attention_mask"].sum()) for b in un)
        cp = sum(b[packing.KEY].ids.size for b in pk)
        rp = sum(packing.packed_tokens(b[packing.KEY]) for b in pk)
        out[kind] = (cu, cp, ru, rp)
    return out


def train_setup(cfg_model, head, mesh):
    """A fresh model of ``cfg_model`` on ``mesh`` and the loop's optimizer: (model, apply,
    params, opt, sched, shard). Call inside ``jax.set_mesh(mesh)``."""
    model = llama.create(cfg_model, head, seed=0, mesh=mesh)
    apply, params, *_ = models.split(model)
    opt, sched = optim.optimizer(config_lib.base_config().train, 1000)
    return model, apply, params, opt, sched, loop.state_shardings(mesh, params, opt)


def _meta(order: str):
    """The meta block of the measured steps: η = ETA and ``order``."""
    return config_lib.derive(defaults.meta(), {"eta": ETA, "order": order})


def jax_steps(cfg_model, pref, meta, reps):
    """{(step, layout): (s/step, XLA GFLOP)} and the model (for the torch copy)."""
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    out = {}
    with jax.set_mesh(mesh):
        model, reward_fn, params, opt, sched, shard = train_setup(cfg_model, "reward", mesh)
        for layout in ("unpacked", "packed"):
            p, mt = pref[layout], meta[layout]
            for name, step_fn, batch in (
                ("RM", rm.rm_step(reward_fn, 0.0), {"pref": p}),
                (
                    "MetaRM 1st",
                    rm.metarm_step(reward_fn, _meta("first"), 0.0),
                    {"pref": p, "meta": mt},
                ),
                (
                    "MetaRM 2nd",
                    rm.metarm_step(reward_fn, _meta("second"), 0.0),
                    {"pref": p, "meta": mt},
                ),
            ):
                r = time_train_step(step_fn, batch, params, opt, sched, shard, mesh, reps)
                out[(name, layout)] = (r["step_s"], r["gflop"])
        # DPO: a causal LM of the same shape, policy and frozen reference (the dpo stage's step)
        from metarm_jax.train import dpo

        lm = llama.create(cfg_model, "lm", seed=1, mesh=mesh)
        logits_fn, lm_params, *_ = models.split(lm)
        both = {"policy": lm_params, "ref": lm_params}
        dopt = dpo.frozen_ref_optimizer(opt)
        dshard = loop.state_shardings(mesh, both, dopt)
        for layout in ("unpacked", "packed"):
            r = time_train_step(
                dpo.dpo_step(logits_fn, 0.1, 0.0),
                {"pref": pref[layout]},
                both,
                dopt,
                sched,
                dshard,
                mesh,
                reps,
            )
            out[("DPO", layout)] = (r["step_s"], r["gflop"])
    return out, model, lm


def torch_steps(model, lm_model, pref, meta, reps):
    """The unshared job in HF PyTorch on the same weights: {step: s/step}."""
    import torch
    from torch.func import functional_call

    torch.set_num_threads(2)
    from metarm_jax.models import hf

    with tempfile.TemporaryDirectory() as d:
        hf.save_hf(model, d)
        from transformers import LlamaForSequenceClassification

        tm = LlamaForSequenceClassification.from_pretrained(d, torch_dtype=torch.float32)
    tm.config.pad_token_id = 0
    tm.train()
    params = dict(tm.named_parameters())
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-6)
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long)

    def rewards(p, ids, mask):
        ids, mask = t(ids), t(mask)
        out = functional_call(tm, p, (ids,), {"attention_mask": mask})
        return out.logits[:, 0]

    def bt(p):
        ids = np.concatenate([pref["chosen_ids"], pref["rejected_ids"]])
        mask = np.concatenate([pref["chosen_mask"], pref["rejected_mask"]])
        r = rewards(p, ids, mask)
        n = len(pref["chosen_ids"])
        return -torch.nn.functional.logsigmoid(r[:n] - r[n:]).mean()

    def J(p):
        m, k, T = meta["input_ids"].shape
        r = rewards(
            p, meta["input_ids"].reshape(m * k, T), meta["attention_mask"].reshape(m * k, T)
        )
        r = r.reshape(m, k)
        d = (r[:, :, None] - r[:, None, :]).abs()
        iu = torch.triu_indices(k, k, 1)
        return (2.0 / k**2 * torch.sigmoid(d[:, iu[0], iu[1]]).sum(-1)).mean()

    def rm_step():
        opt.zero_grad()
        bt(params).backward()
        opt.step()

    def meta_step():
        opt.zero_grad()
        names = list(params)
        gj = torch.autograd.grad(J(params), [params[n] for n in names])
        prime = {n: (params[n] + ETA * g).detach().requires_grad_() for n, g in zip(names, gj)}
        gl = torch.autograd.grad(bt(prime), [prime[n] for n in names])
        for n, g in zip(names, gl):
            params[n].grad = g
        opt.step()

    # DPO: the policy's and the frozen reference's log-probabilities of both responses
    from transformers import LlamaForCausalLM

    with tempfile.TemporaryDirectory() as d:
        hf.save_hf(lm_model, d)
        policy = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).train()
        ref = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    dopt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    both_ids = t(np.concatenate([pref["chosen_ids"], pref["rejected_ids"]]))
    both_mask = t(np.concatenate([pref["chosen_mask"], pref["rejected_mask"]]))

    def seq_logp(m, ids, mask):
        logp = torch.log_softmax(m(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
        return (tok * mask[:, 1:]).sum(-1)

    def dpo_step():
        dopt.zero_grad()
        n = len(pref["chosen_ids"])
        with torch.no_grad():
            r = seq_logp(ref, both_ids, both_mask)
        p = seq_logp(policy, both_ids, both_mask)
        margin = (p[:n] - r[:n]) - (p[n:] - r[n:])
        (-torch.nn.functional.logsigmoid(0.1 * margin).mean()).backward()
        dopt.step()

    out = {}
    for name, fn in (("RM", rm_step), ("MetaRM 1st", meta_step), ("DPO", dpo_step)):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def median_batch(bs, key):
    """The batch whose padded length is the median of the data's (a typical step)."""
    lengths = [b[key].shape[-1] for b in bs]
    return bs[int(np.argsort(lengths)[len(lengths) // 2])]


def run(name, args):
    _, spec, pf, metas, vocab = load(name, args, ks=(args.ppo_r,) if args.ppo else ())
    mf = metas[args.k]
    print(
        f"\n## {name}: {len(pf)} pairs, {len(mf)} meta prompts x k={args.k}, max_length "
        f"{spec.max_length}, buckets {spec.buckets}; n={args.n} pairs, m={args.m} meta prompts "
        "per step"
    )
    cfg = llama.LlamaConfig(
        vocab,
        args.hidden,
        args.mlp,
        args.layers,
        args.heads,
        args.heads,
        max_position_embeddings=4096,
    )
    if args.sft:
        un, pk, real = sft_counts(pf, spec, args.sft_batch)
        print(
            f"\nSFT (chosen sequences, batch {args.sft_batch}): tokens computed {un:,} unpacked -> "
            f"{pk:,} packed ({un / pk:.2f}x fewer); real {real:,}"
        )
        st = sft_step_times(cfg, pf, spec, args.sft_step_batch, args.reps)
        (su, fu, bu), (sp, fp, bp) = st["unpacked"], st["packed"]
        print(
            f"SFT step on the median batch of {args.sft_step_batch}: unpacked "
            f"{bu['input_ids'].shape} {su:.3f} s ({fu:.1f} GFLOP) -> packed "
            f"{bp[packing.KEY].ids.shape} {sp:.3f} s ({fp:.1f} GFLOP): {su / sp:.2f}x"
        )
    if args.ppo:
        ro = rollout_batches(metas[args.ppo_r], args.ppo_q, args.ppo_r, args.ppo_tn, spec.pad_id)
        res = ppo_scoring(cfg, ro, args.ppo_r, args.ppo_tn, args.reps, args.torch)
        (cu, cp), t = res["computed"], res["times"]
        print(
            f"\nPPO scoring: {len(ro)} roll-out batches of {args.ppo_q} prompts x {args.ppo_r}, "
            f"Tn={args.ppo_tn}; g={res['g']} responses per packed row; tokens computed {cu:,} -> "
            f"{cp:,} ({cu / cp:.2f}x); median batch {res['shape']}, median of {args.reps}:"
        )
        tt = t.get("torch")
        vs_torch = f"{tt:.3f} | {tt / t['packed']:.2f}x" if tt else "- | -"
        print(
            "| step | unpacked s | packed s | speed-up | torch s (unpacked) | packed JAX vs torch |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| PPO scoring | {t['unpacked']:.3f} | {t['packed']:.3f} | "
            f"{t['unpacked'] / t['packed']:.2f}x | {vs_torch} |"
        )
    if not args.steps:
        return
    counts = token_counts(pf, mf, spec, args)
    print(
        "| batch | computed, unpacked | computed, packed | ratio | real, unpacked | real, packed |"
    )
    print("|---|---|---|---|---|---|")
    for kind, (cu, cp, ru, rp) in counts.items():
        print(f"| {kind} | {cu:,} | {cp:,} | {cu / cp:.2f}x | {ru:,} | {rp:,} |")
    # One typical step: the unpacked batch of median length, and the same examples packed.
    un_p = batches(pf, F.CollatePairs, spec, args.n, False)
    i = next(j for j, b in enumerate(un_p) if b is median_batch(un_p, "chosen_ids"))
    pref = {"unpacked": un_p[i], "packed": batches(pf, F.CollatePairs, spec, args.n, True)[i]}
    un_m = batches(mf, F.CollateMeta, spec, args.m, False, k=args.k)
    i = next(j for j, b in enumerate(un_m) if b is median_batch(un_m, "input_ids"))
    meta = {
        "unpacked": un_m[i],
        "packed": batches(mf, F.CollateMeta, spec, args.m, True, k=args.k)[i],
    }
    jx, model, lm = jax_steps(cfg, pref, meta, args.reps)
    th = torch_steps(model, lm, pref["unpacked"], meta["unpacked"], args.reps) if args.torch else {}
    print(
        f"\nmodel: {llama.count_params(model) / 1e6:.1f}M params ({args.layers} layers, width "
        f"{args.hidden}); step on the median batch: pairs {pref['unpacked']['chosen_ids'].shape}"
        f" -> packed {pref['packed'][packing.KEY].ids.shape}, "
        f"meta {meta['unpacked']['input_ids'].shape}"
        f" -> packed {meta['packed'][packing.KEY].ids.shape}; median of {args.reps} steps"
    )
    print(
        "| step | unpacked s | packed s | speed-up | GFLOP unpacked | GFLOP packed | torch s "
        "(unpacked) | packed JAX vs torch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for step in ("RM", "MetaRM 1st", "MetaRM 2nd", "DPO"):
        (su, fu), (sp, fp) = jx[(step, "unpacked")], jx[(step, "packed")]
        ts = th.get(step)
        tcol = f"{ts:.3f} | {ts / sp:.2f}x" if ts else "- | -"
        print(f"| {step} | {su:.3f} | {sp:.3f} | {su / sp:.2f}x | {fu:.1f} | {fp:.1f} | {tcol} |")
    s1, s2 = jx[("MetaRM 1st", "packed")], jx[("MetaRM 2nd", "packed")]
    print(f"second ÷ first order (packed): time {s2[0] / s1[0]:.2f}, FLOPs {s2[1] / s1[1]:.2f}")


def rollout_batches(mf, q, r, tn, pad_id):
    """Roll-out rows [q*r, W + tn] (a left-padded prompt, a right-padded response of tn slots)
    from meta examples: the prompt is the common prefix of a meta example's sequences."""
    out = []
    groups = [f["samples"] for f in mf if len(f["samples"]) >= r]
    for start in range(0, len(groups) - q + 1, q):
        batch = groups[start : start + q]
        cuts = [packing.common_prefix(list(s[:r])) for s in batch]
        w = 16 * -(-max(cuts) // 16)
        ids = np.full((q * r, w + tn), pad_id, np.int32)
        mask = np.zeros_like(ids)
        for i, (samples, c) in enumerate(zip(batch, cuts)):
            for j, seq in enumerate(samples[:r]):
                row, resp = i * r + j, seq[c : c + tn]
                ids[row, w - c : w], mask[row, w - c : w] = seq[:c], 1
                ids[row, w : w + len(resp)], mask[row, w : w + len(resp)] = resp, 1
        out.append((ids, mask))
    return out


def ppo_scoring(cfg_model, rollouts, r, tn, reps, with_torch):
    """Tokens and time of the roll-out scoring, unpacked vs packed, and torch unpacked."""
    import jax.numpy as jnp

    from metarm_jax.models import hf
    from metarm_jax.train import rollout_scoring

    models_ = {
        h: llama.create(cfg_model, h, seed=i) for i, h in enumerate(("lm", "value", "reward"))
    }
    split = {h: models.split(m) for h, m in models_.items()}
    lm_apply, actor = split["lm"][:2]
    args = (actor, actor, split["value"][1], split["reward"][1])
    fns = {
        "unpacked": rollout_scoring.make_score_fn(
            lm_apply, lm_apply, split["value"][0], split["reward"][0]
        ),
        "packed": rollout_scoring.make_score_fn(
            lm_apply, lm_apply, split["value"][0], split["reward"][0], per_prompt=r, cfg=cfg_model
        ),
    }
    n, width = rollouts[0][0].shape
    g = rollout_scoring.score_group(cfg_model, n, r, width - tn, tn, 1)
    computed_u = sum(ids.size for ids, _ in rollouts)
    computed_p = sum(ids.shape[0] // g * (ids.shape[1] - tn + g * tn) for ids, _ in rollouts)
    lengths = [ids.shape[1] for ids, _ in rollouts]
    ids, mask = rollouts[int(np.argsort(lengths)[len(lengths) // 2])]
    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    times = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args, jids, jmask, tn))  # compile
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args, jids, jmask, tn))
            ts.append(time.perf_counter() - t0)
        times[name] = float(np.median(ts))
    if with_torch:
        import torch
        from transformers import LlamaForCausalLM

        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as d:
            hf.save_hf(models_["lm"], d)
            lm = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        tid, tmask = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)

        head = torch.zeros(cfg_model.hidden_size, 1)

        def torch_score():
            out = []
            with torch.inference_mode():
                for _ in range(2):  # actor, reference
                    out.append(lm(input_ids=tid, attention_mask=tmask).logits[:, -tn - 1 : -1])
                for _ in range(2):  # critic, RM: the backbone, then a one-column head
                    h = lm.model(input_ids=tid, attention_mask=tmask).last_hidden_state
                    out.append(h @ head)
            return out

        torch_score()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch_score()
            ts.append(time.perf_counter() - t0)
        times["torch"] = float(np.median(ts))
    return dict(g=g, shape=ids.shape, computed=(computed_u, computed_p), times=times)


def sft_counts(pf, spec, size, row_multiple=1):
    """Tokens computed over the data's SFT batches (chosen sequences), unpacked vs packed."""
    un = pk = real = 0
    for i in range(0, len(pf) - size + 1, size):
        seqs = [f["chosen"] for f in pf[i : i + size]]
        un += size * spec.bucket(max(len(x) for x in seqs))
        ex = [(x, np.ones_like(x)) for x in seqs]
        pk += packing.pack_examples(ex, spec.buckets, spec.pad_id, row_multiple).ids.size
        real += sum(len(x) for x in seqs)
    return un, pk, real


def sft_step_times(cfg_model, pf, spec, size, reps):
    """The SFT train step (grads, clipping, AdamW) on the batch of median padded length,
    unpacked vs packed: {layout: (s/step, XLA GFLOP)}."""
    from metarm_jax.train import sft

    groups = [pf[i : i + size] for i in range(0, len(pf) - size + 1, size)]
    lengths = [spec.bucket(max(len(f["chosen"]) for f in g)) for g in groups]
    group = groups[int(np.argsort(lengths)[len(lengths) // 2])]
    feats = [{"ids": f["chosen"], "loss": np.ones_like(f["chosen"])} for f in group]
    collate = F.CollateSFT(spec)
    layouts = {"unpacked": collate(feats)}
    collate.pack_sft = True
    layouts["packed"] = collate(feats)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    out = {}
    with jax.set_mesh(mesh):
        _, logits_fn, params, opt, sched, shard = train_setup(cfg_model, "lm", mesh)
        for layout, b in layouts.items():
            r = time_train_step(
                sft.sft_step(logits_fn), {"sft": b}, params, opt, sched, shard, mesh, reps
            )
            out[layout] = (r["step_s"], r["gflop"], b)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="hh,quickstart")
    p.add_argument("--tokenizer", default=str(ROOT / "runs" / "smollm2-135m"))
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--mlp", type=int, default=1408)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--torch", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="the RM / MetaRM step section")
    p.add_argument("--ppo", type=int, default=1)
    p.add_argument("--ppo-q", type=int, default=2)
    p.add_argument("--ppo-r", type=int, default=8)
    p.add_argument("--ppo-tn", type=int, default=128)
    p.add_argument("--sft", type=int, default=1)
    p.add_argument("--sft-batch", type=int, default=32)
    p.add_argument("--sft-step-batch", type=int, default=8)
    args = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; JAX {jax.__version__}")
    for name in args.data.split(","):
        run(name, args)


if __name__ == "__main__":
    main()
