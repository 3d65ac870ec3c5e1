"""bench/compile_7b.py on the tiny preset: abstract lowering + compile on 1 and 8 simulated
devices (conftest's), with sanity checks of its memory, FLOP and collective figures. The 7B
numbers themselves are in docs/scaling.md; this keeps the tool that produced them working."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys

import jax
import pytest

from metarm_jax.models import llama

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compile_7b.py"


def _load():
    spec = importlib.util.spec_from_file_location("compile_7b", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compile_7b"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


C = _load()
# Paper ratio (2n + mk) / 2n = 3.5 with batches the 8 devices divide; short sequences.
SHAPES = C.Shapes(n=8, m=8, k=5, seq_len=32, cache_len=64)
RATIO = (2 * SHAPES.n + SHAPES.m * SHAPES.k) / (2 * SHAPES.n)


def _run(name):
    return C.run_config(name, "tiny", SHAPES, compiler_options=C.FAST)


@pytest.fixture(scope="module")
def rows():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated devices of tests/conftest.py")
    names = ("rm@fsdp8@f32:none", "meta1@fsdp8@f32:none", "decode16@1@bf16:none")
    return {n: _run(n) for n in names}


def test_train_step_memory(rows):
    cfg = llama.preset("tiny")
    param_bytes = 4 * cfg.num_params("reward")
    for name in ("rm@fsdp8@f32:none", "meta1@fsdp8@f32:none"):
        r = rows[name]
        assert r["param_bytes"] == param_bytes
        # each device holds its shard of the train state (params + Adam's two fp32 moments),
        # donated (aliased into the outputs), and much less than the whole state
        assert 3 * param_bytes / 8 <= r["argument_bytes"] < 3 * param_bytes
        assert r["alias_bytes"] >= 3 * param_bytes / 8
        assert r["peak_bytes"] >= r["argument_bytes"] and r["temp_bytes"] > 0
        assert r["max_rss_bytes"] < 16 * 2**30


def test_train_step_flops(rows):
    rm, meta = rows["rm@fsdp8@f32:none"], rows["meta1@fsdp8@f32:none"]
    # the HLO count (loop trip counts included) is the model's matmul FLOPs per device (no remat)
    assert rm["hlo_flops"] == pytest.approx(rm["model_flops_per_device"], rel=0.1)
    assert meta["hlo_flops"] == pytest.approx(meta["model_flops_per_device"], rel=0.1)
    # XLA's cost analysis counts the 2-layer scan body once: below the HLO count
    assert rm["xla_flops"] < rm["hlo_flops"]
    # MetaRM first order: one fwd+bwd over m·k meta sequences and one over 2n pair sequences
    assert meta["hlo_flops"] / rm["hlo_flops"] == pytest.approx(RATIO, rel=0.1)


def test_collectives_under_fsdp(rows):
    rm, meta = rows["rm@fsdp8@f32:none"], rows["meta1@fsdp8@f32:none"]
    cfg = llama.preset("tiny")
    # the weights FSDP shards (every matrix with an embed axis): all but the embedding table and
    # the RMSNorm scales, which the sharding table replicates
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    layer_bytes = 4 * (cfg.num_params("reward") - cfg.vocab_size * cfg.hidden_size - norms)
    ag, ag_meta = rm["collectives"]["all-gather"], meta["collectives"]["all-gather"]
    assert ag["count"] > ag["static"]  # the scan body's gathers count once per layer
    # every layer's weights are gathered in the forward and again in the backward
    assert ag["bytes"] >= 2 * layer_bytes
    # MetaRM runs two forward/backward passes: about twice the vanilla step's weight gathers
    assert 1.5 <= ag_meta["bytes"] / ag["bytes"] <= 2.5
    # the layers' gradients are reduced over fsdp (XLA:CPU: all-reduce; GPU/TPU: reduce-scatter)
    reduced = sum(
        rm["collectives"].get(k, {}).get("bytes", 0) for k in ("all-reduce", "reduce-scatter")
    )
    assert reduced >= 0.9 * layer_bytes


def test_decode_step_one_device(rows):
    r = rows["decode16@1@bf16:none"]
    cfg = llama.preset("tiny")
    kv = 2 * cfg.num_layers * 16 * 64 * cfg.num_kv_heads * cfg.head_dim * 2  # k and v, bf16
    assert kv <= r["cache_bytes"] < 1.1 * kv
    # the decoding weights a step reads whole: all but the embedding table (B rows of it)
    assert r["param_bytes"] == 2 * (cfg.num_params("lm") - cfg.vocab_size * cfg.hidden_size)
    assert r["argument_bytes"] >= r["param_bytes"] + r["cache_bytes"]
    assert r["alias_bytes"] >= kv  # the donated cache is updated in place
    assert r["collectives"] == {}
    assert r["hlo_flops"] == pytest.approx(r["model_flops_per_device"], rel=0.1)


def test_cli_on_8_devices(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated devices of tests/conftest.py")
    out = tmp_path / "c.json"
    args = ["--preset=tiny", "--configs=decode16@fsdp8@bf16:none", "--cache-len=64"]
    (r,) = C.main([*args, "--fast-compile", f"--out={out}"])
    assert r["argument_bytes"] >= (r["param_bytes"] + r["cache_bytes"]) / 8
    assert r["collectives"]["all-gather"]["count"] > 0  # FSDP weights are gathered per token
    assert json.loads(out.read_text())["rows"][0]["config"] == "decode16@fsdp8@bf16:none"
    assert "| decode16@fsdp8@bf16:none |" in out.with_suffix(".md").read_text()


def test_hlo_analysis_counts_loop_trips_and_groups():
    hlo = """HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %w = f32[2,16]{1,0} constant({...})
  %ag = f32[16,16]{1,0} all-gather(%w), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  %d = f32[8,16]{1,0} dot(%x, %ag), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ar = f32[8,16]{1,0} all-reduce(%d), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  ROOT %t = (s32[], f32[8,16]{1,0}) tuple(%i, %ar)
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %w = (s32[], f32[8,16]{1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %rs = bf16[1,16]{1,0} reduce-scatter(%a), channel_id=3, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}
  ROOT %r = f32[8,16]{1,0} get-tuple-element(%w), index=1
}
"""
    out = C.analyse_hlo(hlo, 8)
    assert out["hlo_flops"] == 3 * 2 * 8 * 16 * 16
    ag, ar, rs = (out["collectives"][k] for k in ("all-gather", "all-reduce", "reduce-scatter"))
    assert (ag["count"], ag["static"], ag["bytes"]) == (3, 1, 3 * 16 * 16 * 4)
    assert ag["wire_bytes"] == math.floor(3 * 16 * 16 * 4 * 7 / 8)
    assert (ar["count"], ar["bytes"], ar["wire_bytes"]) == (3, 3 * 512, 3 * 512)  # groups of 2
    assert (rs["count"], rs["bytes"]) == (1, 8 * 16 * 2)  # one bf16 shard of 8
    assert out["unknown_trip_counts"] == 0


def test_configuration_names():
    sets = C.named_sets()
    assert len(sets["main"]) == 3 * len(C.STEPS)
    assert C.parse_mesh("fsdp4tp2") == {"data": 1, "fsdp": 4, "tensor": 2}
    assert C.parse_policy(C.PAPER_POLICY) == {
        "dtype": "bfloat16",
        "param_dtype": "float32",
        "remat": "dots_no_batch",
    }
    with pytest.raises(SystemExit):
        C.parse_policy("fp8:none")
