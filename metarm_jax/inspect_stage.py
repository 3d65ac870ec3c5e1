"""The ``inspect`` stage: build or load the model on the mesh, print where every weight lives,
and time a jitted forward on a batch sharded like training data. A cheap first check that a
checkpoint, a mesh and the sharding table fit together before a long run."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metarm_jax import models, sharding
from metarm_jax.config.stages import StageContext


def run(ctx: StageContext) -> dict:
    cfg, mesh = ctx.config, ctx.mesh
    ic = cfg.inspect
    t0 = time.time()
    model = models.from_config(cfg.model, ic.head, mesh, seed=cfg.seed)
    load_s = time.time() - t0
    graphdef, state = nnx.split(model)
    lead = jax.process_index() == 0
    if lead:
        print(f"{'parameter':24s} {'shape':22s} {'logical axes':44s} spec")
        for path, var in nnx.to_flat_state(state):
            x = var.get_value()
            print(
                f"{'.'.join(map(str, path)):24s} {tuple(x.shape)!s:22s} "
                f"{var.get_metadata()['axes']!s:44s} {x.sharding.spec}"
            )
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))

    # Each process makes its own slice of the global batch, as a data pipeline would.
    rng = np.random.default_rng([ctx.config.seed, jax.process_index()])
    local_batch = ic.batch_size // jax.process_count()
    ids = rng.integers(3, model.cfg.vocab_size, (local_batch, ic.seq_len), dtype=np.int32)
    mask = np.ones_like(ids)
    mask[0, : ic.seq_len // 2] = 0  # one left-padded row exercises the padding path
    batch_sh = sharding.batch_sharding(mesh, 2)
    ids, mask = (jax.make_array_from_process_local_data(batch_sh, a) for a in (ids, mask))

    @jax.jit
    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    with jax.set_mesh(mesh):
        t0 = time.time()
        compiled = forward.lower(state, ids, mask).compile()
        compile_s = time.time() - t0
        out = compiled(state, ids, mask)
        jax.block_until_ready(out)
        t0 = time.time()
        out = jax.block_until_ready(compiled(state, ids, mask))
        step_s = time.time() - t0
    finite = bool(jnp.isfinite(out).all())
    tokens = ic.batch_size * ic.seq_len
    summary = dict(
        params=n_params,
        head=ic.head,
        output_shape=tuple(out.shape),
        finite=finite,
        load_s=round(load_s, 2),
        compile_s=round(compile_s, 2),
        forward_tokens_per_s=round(tokens / step_s, 1),
    )
    if not finite:
        raise FloatingPointError(f"inspect: the forward pass produced non-finite values: {summary}")
    return summary
