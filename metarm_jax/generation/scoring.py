"""Reward-model scoring of k responses per prompt: the one scoring loop over meta batches, used by
the RM stages' evaluation (tokenized batches) and by the report and the RM judge (text).

    scorer = RewardScorer(config, mesh, "runs/x/rm/export/rm")
    rewards, sample_mask = scorer.score(prompts, [[resp_1, ..., resp_k], ...])   # [m, k] each
    scores = scorer.score_fn(prompts, responses)                                 # [m]
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.core import metarm
from metarm_jax.data import MetaExample, SamplingInfo


def meta_scores(meta_rewards, params, mesh, batches) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(rewards [m, k], sample_mask [m, k]) per meta batch, without a padded last batch's fill rows.

    meta_rewards(params, batch) -> [m, k], e.g. a jitted ``metarm.meta_rewards`` on a
    reward_fn; the batch is unpacked (input_ids, attention_mask) or shared-prompt packed.
    """
    for b in batches:
        b = dict(b, example_mask=D.real_rows(b).astype(np.int32))  # every host's rows, in order
        g = sharding.global_batch(mesh, b)
        seqs = {k: v for k, v in g.items() if k not in ("example_mask", "sample_mask")}
        r, keep, sm = sharding.to_host(
            (meta_rewards(params, seqs), g["example_mask"], g["sample_mask"])
        )
        keep = keep > 0
        yield r[keep], sm[keep]


_EVAL_SAMPLING = SamplingInfo(
    temperature=0.0,
    top_p=1.0,
    policy_step=0,
    seed=0,
    round=0,
    repetition_penalty=1.0,
    max_new_tokens=0,
    policy="eval",
)


class RewardScorer:
    """Scores (prompt, responses) texts with a reward model, tokenized as the RM was trained
    (``config.data``), the model built by ``models.from_config`` from ``config.model``."""

    def __init__(self, config, mesh, rm_path: str):
        self.config, self.mesh = config, mesh
        self.tok = D.load_tokenizer(config.data.tokenizer_path)
        model = models.from_config(config.model, "reward", mesh, path=rm_path, seed=config.seed)
        reward_fn, self.params, *_ = models.split(model)
        self.meta_rewards = jax.jit(lambda p, b: metarm.meta_rewards(reward_fn, p, b))

    def score(
        self, prompts: list[str], responses: list[list[str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """rewards [m, k] and sample_mask [m, k] for k responses per prompt."""
        k = max(len(r) for r in responses)
        recs = [MetaExample(p, tuple(r), _EVAL_SAMPLING) for p, r in zip(prompts, responses)]
        it = D.meta_iterator(
            self.config.data,
            self.tok,
            records=recs,
            k=k,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
        )
        with jax.set_mesh(self.mesh):
            scored = list(meta_scores(self.meta_rewards, self.params, self.mesh, it))
        rewards = np.concatenate([r for r, _ in scored])
        if len(rewards) != len(prompts):  # a dropped row would shift every later score
            raise RuntimeError(
                f"scoring: scored {len(rewards)} of {len(prompts)} prompts; some samples did not "
                "fit data.max_length (raise it)."
            )
        return rewards, np.concatenate([m for _, m in scored])

    def score_fn(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self.score(list(prompts), [[r] for r in responses])[0][:, 0]
