"""The rm and metarm stages: they learn, MetaRM spreads shifted rewards, sharding, HF export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax import models, sharding
from metarm_jax.config import defaults, stages
from metarm_jax.config import lib as config_lib
from metarm_jax.core import metarm
from metarm_jax.models import llama
from metarm_jax.train import rm
from tests import marker_task

ETA_TEST = 1e-3  # η = α, the paper's choice (see the learning test's docstring)


def _config(steps=60, **meta):
    c = config_lib.base_config()
    c.train.update(
        dict(
            steps=steps,
            lr=1e-3,
            warmup=10,
            schedule="constant",
            eval_every=0,
            save_every=0,
            progress=False,
        )
    )
    c.data.update(dict(pref_batch_size=16, meta_batch_size=8))
    c.meta.update(dict(k=4, eta=ETA_TEST, **meta))
    return c


def _run(stage, config, workdir):
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    data = marker_task.stage_data(config, stage == "metarm")
    return stages_fn(stage)(stages.StageContext(config, mesh, str(workdir)), data=data)


def stages_fn(stage):
    return {"rm": rm.run_rm, "metarm": rm.run_metarm}[stage]


def test_rm_and_metarm_learn_and_metarm_spreads_shifted_rewards(tmp_path):
    """Both reach >= 90% validation accuracy on the synthetic task (chosen = has the marker),
    and the test prints mean |Δr| on a shifted meta set for both (pytest -s shows it).

    The meta set is shifted (other response tokens) and saturated in the coarse property (every
    response has the marker), as the paper's shifted policy, so the vanilla RM scores its responses
    nearly alike. Measured (60 steps, one seed): vanilla 0.0042; MetaRM 0.0057 at η = α = 1e-3,
    0.0054 at η = 0.03, 0.0056 at η = 0.1: MetaRM raises mean |Δr| by ~30%, but both stay tiny
    next to the 6.4 reward margin on the pairs. The gain does not grow with η (100x η, same
    gain), so it may be trajectory noise rather than the meta step: it is printed, not asserted,
    until a multi-seed study separates the two.
    """
    van = _run("rm", _config(), tmp_path / "rm")
    meta = _run("metarm", _config(), tmp_path / "metarm")
    print(
        f"\nvanilla RM : val acc {van['eval/accuracy']:.3f}  mean |Δr| on shifted meta set "
        f"{van['eval/meta/absdiff_mean']:.4f}  (var {van['eval/meta/absdiff_var']:.2e})"
    )
    print(
        f"MetaRM η={ETA_TEST}: val acc {meta['eval/accuracy']:.3f}  mean |Δr| on shifted meta set "
        f"{meta['eval/meta/absdiff_mean']:.4f}  (var {meta['eval/meta/absdiff_var']:.2e})"
    )
    assert van["eval/accuracy"] >= 0.9 and meta["eval/accuracy"] >= 0.9
    assert np.isfinite(meta["eval/meta/absdiff_mean"]) and meta["eval/meta/J"] > 0
    # The RM was exported as an HF LlamaForSequenceClassification that transformers agrees with.
    _check_export_matches_transformers(tmp_path / "metarm" / "export" / "rm")


def _check_export_matches_transformers(export_dir):
    """The HF export scores sequences like HF transformers' LlamaForSequenceClassification."""
    torch = pytest.importorskip("torch")
    import transformers

    from metarm_jax.models import hf

    ours = hf.load_hf(str(export_dir), head="reward")
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(
        str(export_dir), dtype=torch.float32
    ).eval()
    pref = marker_task.preference_arrays(4, 24, seed=9)
    ids, mask = pref["chosen_ids"], pref["chosen_mask"]
    with torch.no_grad():
        want = (
            theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
            .logits[:, 0]
            .numpy()
        )
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize(
    "mesh_shape,order",
    [(dict(data=1, fsdp=8, tensor=1), "first"), (dict(data=4, fsdp=1, tensor=2), "second")],
)
def test_metarm_step_on_8_devices_equals_1_device(mesh_shape, order):
    from metarm_jax.train import loop, optim

    pref = marker_task.preference_arrays(16, 16, seed=0)
    meta = marker_task.meta_arrays(8, 4, 16, seed=1)
    batch = {"pref": pref, "meta": meta}
    cfg = config_lib.base_config().train
    cfg.lr = 1e-3

    def one_step(mesh):
        with jax.set_mesh(mesh):
            model = llama.create(llama.preset("tiny"), "reward", seed=0, mesh=mesh)
            reward_fn, params, *_ = models.split(model)
            opt, sched = optim.optimizer(cfg, 10)
            shard = loop.state_shardings(mesh, params, opt)
            state = loop.init_state(params, opt, 0, shard)
            step = loop.jit_train_step(
                loop.make_train_step(
                    rm.metarm_step(
                        reward_fn,
                        config_lib.derive(defaults.meta(), {"eta": 0.1, "order": order}),
                        0.0,
                    ),
                    opt,
                    sched,
                ),
                mesh,
                shard,
                batch,
            )
            grads = jax.jit(
                lambda p, b: metarm.meta_grads(
                    reward_fn, p, b["pref"], b["meta"], 0.1, order, center=0.0
                )[0]
            )(state["params"], sharding.global_batch(mesh, batch))
            state, metrics = step(state, sharding.global_batch(mesh, batch))
            return jax.device_get((grads, state["params"], metrics))

    g1, p1, m1 = one_step(sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    g8, p8, m8 = one_step(sharding.make_mesh(mesh_shape))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # After one AdamW step (lr 1e-3): Adam turns a ~1e-12 difference in a ~0 gradient (an unused
    # embedding row) into up to ~lr·sign(g); allow 10% of lr. A wrong gradient moves many by 2·lr.
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    for k in ("loss", "accuracy", "meta/J", "grad_norm"):
        np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, err_msg=k)
