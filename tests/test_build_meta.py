"""build_meta: output the data layer reads back, and a run killed with SIGKILL after its first
chunk, then restarted, writes the same bytes as a run never killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# Builds the stage context; exec'd here and in the subprocess so both runs see the same config.
SETUP = r"""
import json, os
import jax
import ml_collections
from metarm_jax import sharding
from metarm_jax.generation import build_meta
from metarm_jax.config import lib as config_lib
from metarm_jax.runtime import fileio
from metarm_jax.config.stages import StageContext

def make_ctx(root, output):
    c = config_lib.base_config()
    c.data.tokenizer_path = ""            # the tokenizer saved with the policy
    c.data.max_prompt_length = 24
    c.sampling.max_new_tokens = 8
    c.sampling.seed = 11
    c.build_meta.update(policy_path=os.path.join(root, "policy"), policy_step=7, round=2,
                        prompt_dataset="prompts", prompt_path=os.path.join(root, "prompts.jsonl"),
                        output_path=output, k=3, chunk_size=3, batch_size=2)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    return StageContext(c, mesh, root)
"""

KILLED_RUN = (
    SETUP
    + r"""
import sys, time
root, output = sys.argv[1], sys.argv[2]
_write = fileio.write_json
def slow_write(path, obj, **kwargs):  # test hook: leave time to be killed between chunks
    _write(path, obj, **kwargs)
    if isinstance(obj, dict) and obj.get("done"):
        time.sleep(2.0)
fileio.write_json = slow_write
build_meta.run(make_ctx(root, output))
print("FINISHED")
"""
)

PROMPTS = [
    f"Question {i}: how do I {w} a {o}?"
    for i, (w, o) in enumerate(
        [
            ("paint", "fence"),
            ("fix", "bike"),
            ("bake", "cake"),
            ("plant", "tree"),
            ("clean", "oven"),
            ("tune", "guitar"),
            ("fold", "shirt"),
            ("wash", "car"),
            ("build", "shed"),
            ("sharpen", "knife"),
        ]
    )
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from metarm_jax.data.tokenizer import train_bpe_tokenizer
    from metarm_jax.models import hf, llama

    root = tmp_path_factory.mktemp("build_meta")
    tok = train_bpe_tokenizer(
        PROMPTS * 3 + ["the a to of and in is it you that"], 300, str(root / "tok")
    )
    model = llama.create(llama.preset("tiny", vocab_size=len(tok)), "lm", seed=3)
    hf.save_hf(model, str(root / "policy"), tokenizer=tok)
    with open(root / "prompts.jsonl", "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p}) + "\n")
    return root


def _ns():
    ns = {}
    exec(compile(SETUP, "<setup>", "exec"), ns)
    return ns


def test_killed_and_resumed_run_is_byte_identical(root):
    from metarm_jax.data import DataSource, load

    ns = _ns()
    clean = str(root / "clean" / "meta.jsonl")
    summary = ns["build_meta"].run(ns["make_ctx"](str(root), clean))
    assert summary["chunks"] == 4 and summary["chunks_resumed"] == 0 and summary["prompts"] == 10

    # The same run in a real process, SIGKILLed once its first chunk file is on disk.
    killed = str(root / "killed" / "meta.jsonl")
    chunk0 = killed + ".chunks/chunk-00000.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(root), killed],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not os.path.exists(chunk0):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(
                "the build_meta subprocess ended before writing a chunk:\n" + proc.stdout.read()
            )
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(killed), "the killed run got to the end; nothing was resumed"
    left = sorted(n for n in os.listdir(killed + ".chunks") if n.startswith("chunk-"))
    assert 1 <= len(left) < 4 and not any(".tmp" in n for n in left)

    resumed = ns["build_meta"].run(ns["make_ctx"](str(root), killed))
    assert resumed["chunks_resumed"] == len(left)
    with open(clean, "rb") as a, open(killed, "rb") as b:
        assert a.read() == b.read()

    # The data layer reads it back with the sampling settings and policy step on every row.
    examples = load("meta", DataSource.of("meta", clean), k=3)
    assert [e.prompt for e in examples] == [f"\n\nHuman: {p}\n\nAssistant:" for p in PROMPTS]
    for e in examples:
        assert len(e.responses) == 3
        assert len(set(e.responses)) > 1  # samples of one prompt differ
        s = e.sampling
        assert (
            s.temperature,
            s.top_p,
            s.repetition_penalty,
            s.seed,
            s.policy_step,
            s.round,
            s.max_new_tokens,
        ) == (0.8, 0.9, 1.1, 11, 7, 2, 8)
        assert s.policy.endswith("policy")


def test_changed_settings_refuse_to_resume(root):
    ns = _ns()
    out = str(root / "changed" / "meta.jsonl")
    ctx = ns["make_ctx"](str(root), out)
    ctx.config.build_meta.max_prompts = 3  # one chunk: quick
    ns["build_meta"].run(ctx)
    ctx.config.sampling.temperature = 0.5
    with pytest.raises(ns["build_meta"].BuildMetaError, match="different build_meta run"):
        ns["build_meta"].run(ctx)


def test_vocab_mismatch_is_a_clear_error(root):
    ns = _ns()
    ctx = ns["make_ctx"](str(root), str(root / "bad" / "meta.jsonl"))
    ctx.config.build_meta.policy_path = ""  # random tiny preset: 256 tokens < the tokenizer's
    ctx.config.data.tokenizer_path = str(root / "tok")
    with pytest.raises(ns["build_meta"].ConfigError, match="vocab_size"):
        ns["build_meta"].run(ctx)
