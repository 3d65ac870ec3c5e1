"""KL(π ‖ π_SFT) from samples (metarm_jax/rlhf/kl.py), checked against HF transformers: the
estimate is Σ_t log π(y_t) − log π_SFT(y_t) over the draws it records, recomputed here by two
independent forward passes in torch; a policy identical to π_SFT gives 0."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from metarm_jax import sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.data import synthetic, world_files
from metarm_jax.models import hf, llama
from metarm_jax.rlhf import kl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    tok_dir = str(root / "tok")
    tok = world_files.world_tokenizer(tok_dir)
    cfg = llama.preset("tiny", vocab_size=64)
    paths = {}
    for name, seed in (("sft", 0), ("policy", 1)):
        model = llama.create(cfg, "lm", seed=seed)
        paths[name] = str(root / name)
        hf.save_hf(model, paths[name], tokenizer=tok)
    config = config_lib.load_config_file("configs/quickstart.py")
    config = config_lib.derive(config, {"data.tokenizer_path": tok_dir})
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    world = synthetic.World(config.world)
    rng = np.random.default_rng(0)
    prompts = [
        world_files.hh_transcript(world.render(p), "").rstrip()
        for p in world.sample_prompts(rng, 12)
    ]
    return root, config, mesh, paths, prompts


def _logprob(path, prompt_ids, response_ids) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + t, tok] for t, tok in enumerate(response_ids)))


def test_kl_estimate_is_the_log_ratio_of_its_own_draws(setup):
    root, config, mesh, paths, prompts = setup
    out = root / "policy_kl.json"
    est = kl.estimate(config, mesh, paths["policy"], paths["sft"], prompts, 3, str(out))
    rec = json.loads(out.read_text())
    assert len(est) == len(prompts) == len(rec["response_ids"])
    for i in (0, 5, 11):
        p, r = rec["prompt_ids"][i], rec["response_ids"][i]
        want = _logprob(paths["policy"], p, r) - _logprob(paths["sft"], p, r)
        assert est[i] == pytest.approx(want, abs=2e-3)
    assert est.mean() > 0  # two different random models: KL > 0 on average
    # cached: the same numbers without sampling again
    np.testing.assert_array_equal(
        kl.estimate(config, mesh, paths["policy"], paths["sft"], prompts, 3, str(out)), est
    )


def test_a_copy_of_sft_has_zero_kl(setup):
    root, config, mesh, paths, prompts = setup
    copy = root / "sft_copy"
    shutil.copytree(paths["sft"], copy)
    est = kl.estimate(config, mesh, str(copy), paths["sft"], prompts, 4, str(root / "c.json"))
    np.testing.assert_allclose(est, 0.0, atol=1e-4)
    same = kl.estimate(config, mesh, paths["sft"], paths["sft"], prompts, 4, str(root / "s.json"))
    assert np.all(same == 0.0)
