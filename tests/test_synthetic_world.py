"""The synthetic world: tokenizer, gold reward, Bradley-Terry labels, files, and the shift premise."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from metarm_jax.config import defaults
from metarm_jax.data import DataSource, load
from metarm_jax.data.formats import ASSISTANT, HUMAN
from metarm_jax.data.synthetic import (
    ASSISTANT_ID,
    BOS_ID,
    EOS_ID,
    FIRST_SYMBOL_ID,
    HUMAN_ID,
    PAD_ID,
    UNK_ID,
    World,
    label_pairs,
)
from metarm_jax.data.world_files import world_tokenizer, write_world


def small_config(**kw):
    c = defaults.world()
    c.num_sft, c.num_train_pairs, c.num_test_pairs = 64, 96, 32
    c.num_train_prompts, c.num_eval_prompts, c.num_ood_prompts = 48, 24, 24
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return world_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    return out, write_world(out, small_config())


def _files(paths):
    return {
        k: pathlib.Path(p).read_bytes() for k, p in paths.items() if k not in ("tokenizer", "world")
    }


# --- determinism -------------------------------------------------------------------------------


def test_write_world_is_deterministic_by_seed(tmp_path, written):
    _, paths = written
    again = write_world(str(tmp_path / "same"), small_config())
    other = write_world(str(tmp_path / "other"), small_config(seed=1))
    a, b, c = _files(paths), _files(again), _files(other)
    assert a == b
    for k in a:
        assert a[k] != c[k], k
    tok = "tokenizer.json"
    assert (
        pathlib.Path(paths["tokenizer"], tok).read_bytes()
        == pathlib.Path(again["tokenizer"], tok).read_bytes()
    )


def test_samplers_are_deterministic_by_seed(world):
    def draw(seed):
        rng = np.random.default_rng(seed)
        ps = world.sample_prompts(rng, 20)
        return [world.render(p) for p in ps] + [
            world.render(r) for r in world.sample_responses(rng, ps)
        ]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_ids_and_every_symbol_is_one_token(world, tokenizer):
    assert len(tokenizer) == world.vocab_size == FIRST_SYMBOL_ID + world.num_symbols <= 96
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert tokenizer.convert_tokens_to_ids([HUMAN, ASSISTANT]) == [HUMAN_ID, ASSISTANT_ID]
    for i, s in enumerate(world.symbols):
        assert tokenizer.encode(s, add_special_tokens=False) == [FIRST_SYMBOL_ID + i]
        assert tokenizer.encode(" " + s, add_special_tokens=False) == [FIRST_SYMBOL_ID + i]
        assert tokenizer.decode([FIRST_SYMBOL_ID + i]) == s


def test_tokenizer_round_trip_and_auto_tokenizer(world, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    world_tokenizer(str(tmp_path))
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    prompts = world.sample_prompts(rng, 30)
    responses = world.sample_responses(rng, prompts)
    for tok in (tokenizer, auto):
        for x, y in zip(prompts, responses):
            px, ry = world.render(x), world.render(y)
            transcript = f"{HUMAN} {px}{ASSISTANT} {ry}"
            ids = tok.encode(transcript, add_special_tokens=False)
            assert ids == [
                HUMAN_ID,
                *world.symbols_to_ids(x),
                ASSISTANT_ID,
                *world.symbols_to_ids(y),
            ]
            assert tok.decode(ids) == transcript
            assert tok.decode(tok.encode(ry, add_special_tokens=False)) == ry
            # the data layer encodes prompt and reply separately: same ids as the whole transcript
            p_ids = tok.encode(f"{HUMAN} {px}{ASSISTANT}", add_special_tokens=False)
            r_ids = tok.encode(" " + ry, add_special_tokens=False)
            assert p_ids + r_ids == ids
    assert tokenizer.encode("w03 hello", add_special_tokens=False) == [FIRST_SYMBOL_ID + 3, UNK_ID]


# --- gold reward -------------------------------------------------------------------------------

# Default world: 4 groups of 12 (w00-w11, w12-w23, w24-w35, w36-w47), cap 0.75,
# weights coarse 1, order 0.3, norep 0.2, length 0.2; target length len(x), tolerance 4.
ASC = "w01 w02 w03 w30"  # topic 0 (3 of 4), first 1 <= last 30: ascending, target length 4
DESC = "w30 w01 w02 w03"  # topic 0, first 30 > last 3: descending


@pytest.mark.parametrize(
    "prompt,response,expect",
    [
        # good 2/4 -> coarse (0.5 / 0.75); pairs 5<40 yes, 40<7 no, 7<40 yes -> 2/3;
        # distinct {5, 40, 7} 3/4; length 4 == target -> 1
        (ASC, "w05 w40 w07 w40", dict(coarse=2 / 3, order=2 / 3, norep=0.75, length=1.0)),
        (DESC, "w05 w40 w07 w40", dict(coarse=2 / 3, order=1 / 3, norep=0.75, length=1.0)),
        # junk word: counts in the length, never good, distinct or in a pair
        (ASC, "w05 foo w07", dict(coarse=(2 / 3) / 0.75, order=0.0, norep=2 / 3, length=0.75)),
        # all good, ascending, distinct, length 6 vs 4: coarse capped at 1, length 1 - 2/4
        (ASC, "w00 w01 w02 w03 w04 w05", dict(coarse=1.0, order=1.0, norep=1.0, length=0.5)),
        # 3 of 4 good = the cap exactly; repeated token; length 8 is 4 off target -> 0
        (
            ASC,
            "w09 w09 w09 w47 w09 w09 w09 w09",
            dict(coarse=1.0, order=1 / 7, norep=0.25, length=0.0),
        ),
        (ASC, "", dict(coarse=0.0, order=0.0, norep=0.0, length=0.0)),
    ],
)
def test_gold_components_by_hand(world, prompt, response, expect):
    c = world.components([prompt], [response])
    for k, v in expect.items():
        assert getattr(c, k)[0] == pytest.approx(v), k
    gold = (
        1.0 * expect["coarse"]
        + 0.3 * expect["order"]
        + 0.2 * expect["norep"]
        + 0.2 * expect["length"]
    )
    assert c.gold[0] == pytest.approx(gold)
    # same on HH-formatted prompts and on symbol indices
    assert world.gold([f"{HUMAN} {prompt}{ASSISTANT}"], [" " + response])[0] == pytest.approx(gold)


def test_gold_config_knobs(world):
    cfg = defaults.world()
    cfg.length_offset, cfg.coarse_cap, cfg.w_order = 2, 0.5, 0.0
    w2 = World(cfg)
    c = w2.components([ASC], ["w05 w40 w07 w40"])
    assert c.length[0] == pytest.approx(0.5)  # target 6, off by 2
    assert c.coarse[0] == 1.0  # 0.5 / 0.5
    assert c.gold[0] == pytest.approx(1.0 + 0.2 * 0.75 + 0.2 * 0.5)


def test_topic_is_majority_group_with_lowest_index_on_ties(world):
    assert world.good_group("w13 w14 w01") == 1
    assert world.good_group("w40 w13 w01") == 0  # a three-way tie
    assert list(world.good_set("w40 w41 w01")) == list(range(36, 48))


def test_coarse_saturates_and_gold_is_bounded(world):
    rng = np.random.default_rng(1)
    prompts = world.sample_prompts(rng, 400)
    sat = world.components(prompts, world.sample_responses(rng, prompts, good_frac=(1.0, 1.0)))
    assert np.all(sat.coarse == 1.0) and np.all(sat.good_frac == 1.0)
    # junk-laden random responses, including empty ones, stay in [0, max_gold]
    junk = [rng.integers(-1, world.num_symbols, size=rng.integers(0, 20)) for _ in prompts]
    base = world.components(prompts, world.sample_responses(rng, prompts))
    for c in (world.components(prompts, junk), base, sat):
        assert np.all(c.gold >= 0) and np.all(c.gold <= world.max_gold + 1e-9)
        for part in (c.coarse, c.order, c.norep, c.length):
            assert np.all((part >= 0) & (part <= 1))
    assert base.coarse.max() == 1.0 and (base.good_frac > world.cfg.coarse_cap).any()


def test_gold_on_token_ids_matches_text(world, tokenizer):
    rng = np.random.default_rng(2)
    prompts = world.sample_prompts(rng, 50)
    responses = world.sample_responses(rng, prompts)
    texts_p = [f"{HUMAN} {world.render(p)}{ASSISTANT}" for p in prompts]
    texts_r = [" " + world.render(r) for r in responses]
    want = world.gold(texts_p, texts_r)
    enc = lambda ts: [tokenizer.encode(t, add_special_tokens=False) for t in ts]
    P, R = enc(texts_p), enc(texts_r)
    p_ids = np.zeros((50, 1 + max(map(len, P))), np.int64)
    r_ids = np.zeros((50, 3 + max(map(len, R))), np.int64)
    for i, (p, r) in enumerate(zip(P, R)):
        p_ids[i, -len(p) - 1 :] = [BOS_ID] + p  # left-padded with BOS, as the sampler has it
        r_ids[i, : len(r) + 2] = r + [EOS_ID, FIRST_SYMBOL_ID]  # tokens after EOS do not count
    np.testing.assert_allclose(world.gold_ids(p_ids, r_ids), want)
    np.testing.assert_allclose(world.gold(prompts, responses), want)


# --- Bradley-Terry labels ----------------------------------------------------------------------


def _pairs(world, n, seed):
    rng = np.random.default_rng(seed)
    prompts = world.sample_prompts(rng, n)
    return prompts, world.sample_responses(rng, prompts), world.sample_responses(rng, prompts)


def test_bt_labels_at_zero_temperature_follow_gold(world):
    prompts, a, b = _pairs(world, 1000, 3)
    d = world.gold(prompts, a) - world.gold(prompts, b)
    a_wins, p = world.label_pairs(prompts, a, b, np.random.default_rng(0), temperature=0.0)
    strict = np.abs(d) > 1e-9
    assert strict.mean() > 0.9
    assert np.array_equal(a_wins[strict], d[strict] > 0)
    assert np.all(p[~strict] == 0.5)
    a_wins2, _ = world.label_pairs(prompts, a, b, np.random.default_rng(0), temperature=1e-6)
    big = np.abs(d) > 1e-4
    assert np.array_equal(a_wins2[big], d[big] > 0)


def test_bt_labels_at_moderate_temperature_match_bt_probability(world):
    prompts, a, b = _pairs(world, 4000, 4)
    d = world.gold(prompts, a) - world.gold(prompts, b)
    t = 0.2
    a_wins, p = label_pairs(
        [world.render(x) for x in prompts],
        [world.render(y) for y in a],
        [world.render(y) for y in b],
        np.random.default_rng(5),
        t,
        world=world,
    )
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-d / t)))
    agree = (a_wins == (d > 0))[d != 0]
    expected = np.maximum(p, 1 - p)[d != 0]
    se = np.sqrt(expected * (1 - expected)).mean() / np.sqrt(agree.size)
    assert 0.5 < agree.mean() < 1.0
    assert abs(agree.mean() - expected.mean()) < 4 * se, (agree.mean(), expected.mean())
    # calibration within bins of P(a wins)
    for lo, hi in ((0.2, 0.4), (0.4, 0.6), (0.6, 0.8)):
        sel = (p >= lo) & (p < hi)
        assert sel.sum() > 100
        assert abs(a_wins[sel].mean() - p[sel].mean()) < 4 * 0.5 / np.sqrt(sel.sum())


# --- files -------------------------------------------------------------------------------------


def test_write_world_files_load_through_the_readers(world, written):
    out, paths = written
    cfg = small_config()
    kw = dict(on_bad_record="error")
    for split, n in (("train", cfg.num_train_pairs), ("test", cfg.num_test_pairs)):
        pairs = load(
            "preference", DataSource.of("hh_rlhf", paths[f"pairs_{split}"], split=split, **kw)
        )
        assert len(pairs) == n and pairs.skip_report.skipped == 0
        rows = [
            json.loads(l) for l in pathlib.Path(paths[f"pairs_{split}"]).read_text().splitlines()
        ]
        for pair, row in zip(pairs, rows):
            assert pair.prompt + pair.chosen == row["chosen"]
            assert pair.prompt + pair.rejected == row["rejected"]
            assert pair.prompt.startswith(HUMAN) and pair.prompt.endswith(ASSISTANT)
            x = world.parse(pair.prompt, junk=False)
            assert f"{HUMAN} {world.render(x)}{ASSISTANT}" == pair.prompt
            g = world.gold([pair.prompt] * 2, [pair.chosen, pair.rejected])
            np.testing.assert_allclose(g, [row["gold_chosen"], row["gold_rejected"]], atol=1e-6)
    # the whole directory by split name works too
    assert (
        len(
            load(
                "preference",
                DataSource.of("hh_rlhf", os.path.join(out, "pairs"), split="test", **kw),
            )
        )
        == cfg.num_test_pairs
    )
    sft = load("sft", DataSource.of("hh_rlhf", paths["sft_train"], **kw))
    assert len(sft) == cfg.num_sft and sft.skip_report.skipped == 0
    assert all(np.all(world.parse(e.response) >= 0) for e in sft)
    texts = {}
    for name, n in (
        ("prompts_train", cfg.num_train_prompts),
        ("prompts_eval", cfg.num_eval_prompts),
        ("prompts_ood", cfg.num_ood_prompts),
    ):
        recs = load(
            "prompt",
            DataSource.of(
                "prompts", paths[name], split="test" if "train" not in name else "train", **kw
            ),
        )
        raw = [json.loads(l)["prompt"] for l in pathlib.Path(paths[name]).read_text().splitlines()]
        assert len(recs) == n == len(raw) and recs.skip_report.skipped == 0
        for r, x in zip(recs, raw):
            assert r.prompt == f"{HUMAN} {x}{ASSISTANT}"
            assert world.render(world.parse(r.prompt)) == x
        texts[name] = set(raw)
    assert not texts["prompts_eval"] & (texts["prompts_train"] | texts["prompts_ood"])
    held_out = texts["prompts_eval"] | texts["prompts_ood"]
    assert not {world.render(world.parse(p.prompt, junk=False)) for p in sft} & held_out
    lo, hi = cfg.ood_prompt_len
    assert all(lo <= len(x.split()) <= hi for x in texts["prompts_ood"])
    meta = json.loads(pathlib.Path(paths["world"]).read_text())
    assert 0.5 < meta["pairs_train_label_gold_agreement"] < 1.0


def test_written_files_tokenize_with_the_world_tokenizer(written):
    from metarm_jax.data import TokenSpec, load_tokenizer, tokenize_pairs

    _, paths = written
    tok = load_tokenizer(paths["tokenizer"])
    pairs = load("preference", DataSource.of("hh_rlhf", paths["pairs_test"], split="test"))
    spec = TokenSpec(64, (32, 64), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    feats = tokenize_pairs(pairs, tok, spec)
    assert len(feats) == len(pairs) and feats.skip_report.skipped == 0
    assert all(UNK_ID not in f["chosen"] and UNK_ID not in f["rejected"] for f in feats)


# --- the shift premise -------------------------------------------------------------------------


def test_shift_premise_coarse_spread_collapses_while_subtle_parts_still_vary(world):
    """Base samples vary a lot in the coarse part; coarse-saturated samples barely do, while the
    subtle parts vary as much as before (what PPO on a coarse-taught RM leaves to tell apart)."""
    rng = np.random.default_rng(6)
    prompts = world.sample_prompts(rng, 2000)
    base = world.components(prompts, world.sample_responses(rng, prompts))
    sat = world.components(
        prompts,
        world.sample_responses(rng, prompts, good_frac=tuple(world.cfg.saturated_good_frac)),
    )
    c = world.cfg
    fig = {}
    for name, comp in (("base", base), ("saturated", sat)):
        subtle = c.w_order * comp.order + c.w_norep * comp.norep + c.w_length * comp.length
        fig[name] = dict(
            coarse_std=comp.coarse.std(),
            weighted_coarse_std=c.w_coarse * comp.coarse.std(),
            weighted_subtle_std=subtle.std(),
            order_std=comp.order.std(),
            norep_std=comp.norep.std(),
            length_std=comp.length.std(),
            gold_mean=comp.gold.mean(),
            gold_std=comp.gold.std(),
        )
    print({k: {n: round(float(v), 3) for n, v in d.items()} for k, d in fig.items()})
    assert fig["base"]["coarse_std"] > 0.3
    assert fig["saturated"]["coarse_std"] < 0.1
    assert fig["base"]["weighted_coarse_std"] > 2 * fig["base"]["weighted_subtle_std"]
    assert fig["saturated"]["weighted_subtle_std"] > fig["saturated"]["weighted_coarse_std"]
    for part in ("order_std", "norep_std", "length_std"):
        assert fig["saturated"][part] > 0.1, part


def test_gold_pairs_label_by_gold_and_leave_out_unrepresentable_responses():
    from metarm_jax.data.synthetic import World
    from metarm_jax.data.world_files import gold_pairs

    world = World(defaults.world())
    prompt = f"{HUMAN} w00 w01 w02 w03{ASSISTANT}"
    responses = ["w00 w01 w02 w03", "w40 w41", "", f"w00{HUMAN} w01", "w02 w03 w02"]
    rows = gold_pairs(world, [(prompt, responses)])
    g = dict(zip(responses, world.gold([prompt] * len(responses), responses)))
    kept = [r for r in responses if r.strip() and HUMAN not in r]
    assert len(rows) == sum(
        1 for i in range(len(kept)) for j in range(i + 1, len(kept)) if g[kept[i]] != g[kept[j]]
    )
    for row in rows:
        assert row["gold_chosen"] > row["gold_rejected"]
        assert row["chosen"].startswith(prompt + " ") and HUMAN not in row["chosen"][len(prompt) :]
    pairs = load("preference", DataSource.of("hh_rlhf", _tmp_jsonl(rows), on_bad_record="error"))
    assert len(pairs) == len(rows)  # every row reads back as one pair of one prompt


def _tmp_jsonl(rows) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return f.name


# --- the fine (subtle) part, the quickstart's world (docs/synthetic.md) -------------------------


def quickstart_world_config():
    from metarm_jax.config import lib as config_lib

    return config_lib.load_config_file(
        str(pathlib.Path(__file__).parents[1] / "configs" / "quickstart.py")
    ).world


def test_fine_part_by_hand():
    """F(x) is the first fine_size symbols of the topic; fine = their share of the response."""
    cfg = defaults.world()
    cfg.fine_size, cfg.w_fine = 4, 0.5
    w = World(cfg)
    assert list(w.fine_set(ASC)) == [0, 1, 2, 3]  # topic 0: w00..w11, F = w00..w03
    # w01, w02 in F; w05 good but not in F; w40 neither: fine 2/4, coarse (3/4)/0.75 = 1
    c = w.components([ASC], ["w01 w02 w05 w40"])
    assert c.fine[0] == pytest.approx(0.5) and c.coarse[0] == pytest.approx(1.0)
    # order 1<2<5<40 = 3/3, norep 1, length 4 == 4 -> 1
    assert c.gold[0] == pytest.approx(1.0 + 0.5 * 0.5 + 0.3 + 0.2 + 0.2)
    assert w.max_gold == pytest.approx(2.2)
    # the base sampler draws a topic token from F with probability ~ U(base_fine_frac)
    rng = np.random.default_rng(0)
    prompts = w.sample_prompts(rng, 500)
    none = w.components(
        prompts, w.sample_responses(rng, prompts, good_frac=(1, 1), fine_frac=(0, 0))
    )
    full = w.components(
        prompts, w.sample_responses(rng, prompts, good_frac=(1, 1), fine_frac=(1, 1))
    )
    assert np.all(none.fine == 0) and np.all(full.fine == 1)
    # fine_size 0 keeps the world without the part exactly (same draws, same gold)
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    old = World(defaults.world())
    a = old.sample_responses(rng1, prompts[:50])
    b = World(defaults.world()).sample_responses(rng2, prompts[:50])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_quickstart_world_exercises_the_fine_part_little_on_base_samples():
    """The premise of the experiment's world: on base samples the fine part's weighted spread is
    a small fraction of the coarse part's; on coarse-saturated samples it is the largest."""
    w = World(quickstart_world_config())
    c = w.cfg
    rng = np.random.default_rng(6)
    prompts = w.sample_prompts(rng, 2000)
    base = w.components(prompts, w.sample_responses(rng, prompts))
    sat = w.components(
        prompts,
        w.sample_responses(
            rng,
            prompts,
            good_frac=tuple(c.saturated_good_frac),
            fine_frac=tuple(c.saturated_fine_frac),
        ),
    )
    assert c.w_fine * base.fine.std() < 0.3 * c.w_coarse * base.coarse.std()
    parts = {
        "coarse": c.w_coarse * sat.coarse.std(),
        "order": c.w_order * sat.order.std(),
        "norep": c.w_norep * sat.norep.std(),
        "length": c.w_length * sat.length.std(),
    }
    assert c.w_fine * sat.fine.std() > max(parts.values()), parts


def test_subtle_part_is_learnable_and_r0_learns_it_poorly(tmp_path):
    """The learnability probe (bench/world_learnability.py at full size): an RM trained with
    r_0's recipe (from π_SFT, the same lr, steps and batch) on coarse-saturated pairs ordered by
    gold ranks held-out saturated pairs at >= 0.75; r_0, trained on the base pairs, does not."""
    from metarm_jax import sharding
    from metarm_jax.config import lib as config_lib
    from metarm_jax.config import stages
    from metarm_jax.data import synthetic, world_files
    from metarm_jax.generation.scoring import RewardScorer
    from metarm_jax.rlhf import driver
    from metarm_jax.rlhf.layout import RunLayout
    from metarm_jax.rlhf.runner import Runner, export_of

    config = config_lib.load_config_file(
        str(pathlib.Path(__file__).parents[1] / "configs" / "quickstart.py")
    )
    config = config_lib.derive(
        config, {"workdir": str(tmp_path), "sft.epochs": 1.0, "train.progress": False}
    )
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    layout = RunLayout(str(tmp_path))
    ctx = driver._prepare(stages.StageContext(config, mesh, str(tmp_path)), layout)
    runner = Runner(ctx)
    sft = export_of(runner.step("sft", "sft", {}), "sft")
    rm0 = export_of(runner.step("rm", "rm", {"model.hf_path": sft}), "rm")
    world = synthetic.World(ctx.config.world)
    rng = np.random.default_rng(101)
    held: set[str] = set()
    sat = tmp_path / "saturated"
    n = int(ctx.config.world.num_train_pairs)
    fileio_rows = {"train": world_files.saturated_pairs(world, rng, n, held)}
    fileio_rows["test"] = world_files.saturated_pairs(world, rng, 400, held)
    sat.mkdir()
    for split, rows in fileio_rows.items():
        (sat / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm_sat = export_of(
        runner.step("rm_sat", "rm", {"model.hf_path": sft, "data.path": str(sat)}), "rm"
    )
    test = fileio_rows["test"]
    cut = [(r["chosen"].rpartition(ASSISTANT), r["rejected"].rpartition(ASSISTANT)) for r in test]
    prompts = [c[0] + c[1] for c, _ in cut]
    pairs = [[c[2], r[2]] for c, r in cut]

    def accuracy(path):
        s = RewardScorer(ctx.config, mesh, path).score(prompts, pairs)[0]
        return float(np.mean(s[:, 0] > s[:, 1]))

    acc_sat, acc_r0 = accuracy(rm_sat), accuracy(rm0)
    print({"rm_sat": acc_sat, "r0": acc_r0})
    assert acc_sat >= 0.75
    assert acc_r0 < acc_sat - 0.1
