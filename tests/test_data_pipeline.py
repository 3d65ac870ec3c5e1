"""Tokenization contract, bucketing, grain determinism, host slices, orbax resume, meta files."""

import os

import numpy as np
import pytest

from metarm_jax.config import defaults
from metarm_jax.data import (
    DataSource,
    MetaExample,
    PreferencePair,
    PromptExample,
    SamplingInfo,
    SFTExample,
    Source,
    TokenSpec,
    load,
    meta_iterator,
    preference_iterator,
    prompt_iterator,
    restore_iterator_state,
    save_iterator_state,
    sft_iterator,
    tokenize_pairs,
    write_meta_dataset,
)

try:  # tests/ may or may not be a package
    from tests.test_data_readers import tiny_tokenizer
except ImportError:
    from test_data_readers import tiny_tokenizer  # noqa: F401 (fixture)

N = 37  # not a multiple of the batch sizes below


def _pairs(n=N):
    return [
        PreferencePair(
            f"\n\nHuman: question {i}" + " more" * (i % 7) + "\n\nAssistant:",
            f" yes {i}",
            f" no {i}" + " no" * (i % 3),
            Source("t", "mem", i),
        )
        for i in range(n)
    ]


def _cfg(**kw):
    c = defaults.data()
    c.max_length, c.bucket_lengths = 64, (16, 32)
    c.pref_batch_size, c.meta_batch_size, c.sft_batch_size, c.prompt_batch_size = 8, 4, 8, 8
    c.num_threads = 1
    for k, v in kw.items():
        c[k] = v
    return c


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_pair_tokens_truncation_and_buckets(tiny_tokenizer):
    tok = tiny_tokenizer
    p = PreferencePair(
        "\n\nHuman: " + "the cat sat " * 20 + "END\n\nAssistant:",
        " yes",
        " no no",
        Source("t", "mem", 0),
    )
    spec = TokenSpec(max_length=24, buckets=(8, 24), pad_id=0, eos_id=2, bos_id=1)
    f = tokenize_pairs([p], tok, spec)[0]
    c_ids, r_ids = _ids(tok, p.chosen), _ids(tok, p.rejected)
    budget = 24 - 2 - max(len(c_ids), len(r_ids))
    prompt = _ids(tok, p.prompt)[-budget:]  # cut from the left: the end of the conversation stays
    assert f["chosen"].tolist() == [1] + prompt + c_ids + [2]
    assert f["rejected"].tolist() == [1] + prompt + r_ids + [2]
    assert len(f["rejected"]) == 24
    assert tok.decode(prompt).endswith("END\n\nAssistant:")


def test_batch_contract_and_padding_sides(tiny_tokenizer):
    recs = _pairs()
    b = next(
        preference_iterator(_cfg(), tiny_tokenizer, records=recs, shard_index=0, shard_count=1)
    )
    assert set(b) == {"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"}
    assert all(v.dtype == np.int32 and v.shape[0] == 8 for v in b.values())
    T = b["chosen_ids"].shape[1]
    assert T in (16, 32, 64)
    lengths = b["chosen_mask"].sum(1)
    assert (
        min(t for t in (16, 32, 64) if t >= max(lengths.max(), b["rejected_mask"].sum(1).max()))
        == T
    )
    for ids, m in ((b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])):
        for row, mask in zip(ids, m):
            n = mask.sum()
            assert (
                (mask[:n] == 1).all() and (row[n:] == 0).all() and row[n - 1] == 2
            )  # right pad, EOS
    left = next(
        preference_iterator(
            _cfg(pad_side="left"), tiny_tokenizer, records=recs, shard_index=0, shard_count=1
        )
    )
    for row, mask in zip(left["chosen_ids"], left["chosen_mask"]):
        n = mask.sum()
        assert (mask[-n:] == 1).all() and row[-1] == 2 and (row[:-n] == 0).all()


def test_sft_loss_mask_covers_assistant_turns_only(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = SFTExample(
        (
            ("\n\nHuman: hi\n\nAssistant:", False),
            (" yes", True),
            ("\n\nHuman: cat\n\nAssistant:", False),
            (" no", True),
        ),
        Source("t", "m", 0),
    )
    b = next(
        sft_iterator(
            _cfg(sft_batch_size=2),
            tok,
            records=[ex, ex],
            shard_index=0,
            shard_count=1,
            shuffle=False,
        )
    )
    ids, loss, m = b["input_ids"][0], b["loss_mask"][0], b["attention_mask"][0]
    n = m.sum()
    segs = [_ids(tok, t) for t, _ in ex.segments]
    want = (
        [0]
        + [0] * len(segs[0])
        + [1] * len(segs[1])
        + [0] * len(segs[2])
        + [1] * len(segs[3])
        + [1]
    )
    assert loss[:n].tolist() == want and (loss[n:] == 0).all()
    assert ids[:n].tolist() == [1] + [t for s in segs for t in s] + [2]


def test_prompt_batches_are_left_padded(tiny_tokenizer):
    prompts = [
        PromptExample(f"\n\nHuman: q {i}" + " cat" * i + "\n\nAssistant:", Source("t", "m", i))
        for i in range(5)
    ]
    it = prompt_iterator(
        _cfg(prompt_batch_size=5),
        tiny_tokenizer,
        records=prompts,
        shard_index=0,
        shard_count=1,
        shuffle=False,
    )
    b = next(it)
    for row, mask, idx in zip(b["input_ids"], b["attention_mask"], b["prompt_index"]):
        n = mask.sum()
        assert (mask[-n:] == 1).all() and (mask[:-n] == 0).all() and row[-n] == 1  # BOS first
        assert tiny_tokenizer.decode(row[-n + 1 :]) == it.records[idx].prompt


def test_meta_batch_masks_missing_samples(tiny_tokenizer):
    info = SamplingInfo(temperature=0.8, top_p=0.9, policy_step=0, seed=0)
    recs = [
        MetaExample("\n\nHuman: q\n\nAssistant:", (" a",) * (1 + i % 3), info) for i in range(8)
    ]
    b = next(
        meta_iterator(
            _cfg(),
            tiny_tokenizer,
            records=recs,
            k=3,
            shard_index=0,
            shard_count=1,
            shuffle=False,
        )
    )
    assert b["input_ids"].shape[:2] == (4, 3) and b["attention_mask"].shape == b["input_ids"].shape
    assert b["sample_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert (b["attention_mask"].sum(-1) > 0).tolist() == b["sample_mask"].astype(bool).tolist()


def _rows_of(batch):
    return [tuple(r[m == 1]) for r, m in zip(batch["chosen_ids"], batch["chosen_mask"])]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_epochs(tiny_tokenizer):
    recs = _pairs()
    mk = lambda **kw: preference_iterator(
        _cfg(num_epochs=2, **kw), tiny_tokenizer, records=recs, shard_index=0, shard_count=1
    )
    a, b, c = list(mk()), list(mk()), list(mk(pref_seed=5))
    assert len(a) == (2 * N) // 8  # drop_remainder over the concatenated epochs
    assert [_rows_of(x) for x in a] == [_rows_of(x) for x in b]
    assert [_rows_of(x) for x in a] != [_rows_of(x) for x in c]
    first_epoch = [r for x in a[:4] for r in _rows_of(x)]
    assert len(set(first_epoch)) == 32  # an epoch is a permutation: no repeats inside it


@pytest.mark.parametrize("hosts", [2, 4])
def test_host_slices_partition_global_batches(tiny_tokenizer, hosts):
    recs = _pairs()
    full = list(
        preference_iterator(_cfg(), tiny_tokenizer, records=recs, shard_index=0, shard_count=1)
    )
    shards = [
        list(
            preference_iterator(
                _cfg(), tiny_tokenizer, records=recs, shard_index=h, shard_count=hosts
            )
        )
        for h in range(hosts)
    ]
    assert all(len(s) == len(full) == N // 8 for s in shards)
    for step, g in enumerate(full):
        parts = [_rows_of(s[step]) for s in shards]
        assert all(len(p) == 8 // hosts for p in parts)
        union = [r for p in parts for r in p]
        assert (
            sorted(union) == sorted(_rows_of(g)) and len(set(union)) == 8
        )  # none lost or repeated


def test_last_partial_batch_is_padded_when_not_dropped(tiny_tokenizer):
    recs = _pairs()
    shards = [
        list(
            preference_iterator(
                _cfg(),
                tiny_tokenizer,
                records=recs,
                shard_index=h,
                shard_count=2,
                drop_remainder=False,
                shuffle=False,
            )
        )
        for h in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 5  # ceil(37 / 8), the same on every host
    mask = np.concatenate([s[-1]["example_mask"] for s in shards])
    assert mask.sum() == N - 4 * 8
    seen = sum((sum(m) for s in shards for m in (b["example_mask"] for b in s)), 0)
    assert seen == N


def test_resume_through_orbax_gives_the_next_batch(tiny_tokenizer, tmp_path):
    recs = _pairs()
    info = SamplingInfo(temperature=0.8, top_p=0.9, policy_step=0, seed=0)
    meta = [MetaExample(f"\n\nHuman: q{i}\n\nAssistant:", (f" a{i}", " b"), info) for i in range(9)]
    cfg = _cfg(num_epochs=0)  # forever: resume across the epoch boundary
    mk = lambda: (
        preference_iterator(cfg, tiny_tokenizer, records=recs, shard_index=0, shard_count=1),
        meta_iterator(cfg, tiny_tokenizer, records=meta, k=5, shard_index=0, shard_count=1),
    )
    pref, met = mk()
    _take(pref, 6), _take(met, 3)  # 6 * 8 > 37: the preference stream is in its second epoch
    save_iterator_state(str(tmp_path / "pref"), pref)
    save_iterator_state(str(tmp_path / "meta"), met)
    want_p, want_m = _take(pref, 2), _take(met, 2)
    pref2, met2 = mk()
    restore_iterator_state(str(tmp_path / "pref"), pref2)
    restore_iterator_state(str(tmp_path / "meta"), met2)
    for want, got in ((want_p, _take(pref2, 2)), (want_m, _take(met2, 2))):
        for w, g in zip(want, got):
            assert w.keys() == g.keys() and all(np.array_equal(w[k], g[k]) for k in w)
    fresh = mk()[0]
    assert not all(np.array_equal(next(fresh)[k], want_p[0][k]) for k in want_p[0])


@pytest.mark.parametrize("ext", ["jsonl", "jsonl.gz", "parquet"])
def test_meta_dataset_round_trip(tmp_path, ext):
    ex = [
        MetaExample(
            f"\n\nHuman: q{i}\n\nAssistant:",
            tuple(f" r{i}{j}" for j in range(1 + i % 3)),
            SamplingInfo(
                temperature=0.8,
                top_p=0.9,
                policy_step=100 + i,
                seed=i,
                round=2,
                policy="ppo-round1",
            ),
        )
        for i in range(4)
    ]
    ex.append(
        MetaExample(
            "\n\nHuman: q\n\nAssistant:",
            ("", " x"),  # an empty sample is allowed
            SamplingInfo(temperature=1.0, top_p=1.0, policy_step=0, seed=9),
        )
    )
    path = write_meta_dataset(str(tmp_path / "round2" / f"meta.{ext}"), ex)
    assert os.listdir(tmp_path / "round2") == [f"meta.{ext}"]  # no temporary file left behind
    got = load("meta", DataSource.of("meta", path), k=3)
    assert [(e.prompt, e.responses, e.sampling) for e in got] == [
        (e.prompt, e.responses, e.sampling) for e in ex
    ]
    assert got[0].source.row == 0 and got[0].source.file == path


def test_global_arrays_on_an_8_device_mesh(tiny_tokenizer):
    import jax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < 8:
        pytest.skip(
            "needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax "
            "is imported (tests/conftest.py sets it)"
        )
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    recs = _pairs()
    local = next(
        preference_iterator(_cfg(), tiny_tokenizer, records=recs, shard_index=0, shard_count=1)
    )
    b = next(preference_iterator(_cfg(), tiny_tokenizer, records=recs, mesh=mesh))
    for k, v in b.items():
        assert isinstance(v, jax.Array) and v.shape == local[k].shape
        assert v.sharding == NamedSharding(mesh, P(("data", "fsdp"), None))
        assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1
        np.testing.assert_array_equal(np.asarray(v), local[k])
    info = SamplingInfo(temperature=0.8, top_p=0.9, policy_step=0, seed=0)
    meta = [MetaExample("\n\nHuman: q\n\nAssistant:", (" a", " b"), info)] * 8
    m = next(meta_iterator(_cfg(meta_batch_size=8), tiny_tokenizer, records=meta, k=2, mesh=mesh))
    assert m["input_ids"].sharding.spec == P(("data", "fsdp"), None, None)
    assert m["sample_mask"].sharding.spec == P(("data", "fsdp"), None)
