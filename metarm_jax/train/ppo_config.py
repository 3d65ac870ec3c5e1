"""Defaults of the PPO stage; the lead's config system mounts them as `config.ppo`.

Every key `metarm_jax.train.ppo` reads lives here (docs/ppo.md explains each one). Sampling
settings (temperature 0.8, top-p 0.9, repetition penalty 1.1, ...) come from `config.sampling`,
roll-out prompts from `config.data.prompt_*`, checkpointing/logging from `config.train`.
Importing this module has no side effects beyond importing ml_collections.
"""

import ml_collections


def ppo_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # --- models (HF directories; '' = the default named) ---
    c.rm_path = ""  # the reward model (LlamaForSequenceClassification); required
    c.policy_path = ""  # actor start; '' = config.model.hf_path (or config.model.preset)
    c.ref_path = ""  # frozen reference; '' = the policy's path
    c.critic_path = ""  # critic start (value head = the RM's score, bias 0); '' = rm_path
    c.frozen_dtype = ""  # param dtype of the frozen ref and RM: '' = config.model.param_dtype
    c.offload_frozen = False  # keep ref/RM params in host memory between roll-outs
    # --- the run ---
    c.iterations = 100  # roll-out + update rounds
    c.queries_per_iteration = 16  # prompts per roll-out (the prompt iterator's batch size)
    c.rollouts_per_query = 16  # responses sampled per prompt (paper: 16)
    c.max_new_tokens = 0  # response length cap; 0 = config.sampling.max_new_tokens
    c.ppo_epochs = 1  # passes over each roll-out buffer
    c.minibatch_size = 64  # roll-out rows per optimizer step (divides queries x roll-outs)
    c.seed = -1  # roll-out / minibatch seed; -1 = config.seed
    # --- optimizers (Adam via optax; one per trainable model) ---
    c.policy_lr = 5e-7  # paper
    c.critic_lr = 1.5e-6  # paper
    c.schedule = "constant"  # constant | linear | cosine (over all optimizer steps)
    c.warmup = 0.0  # steps if >= 1, else a fraction of the run
    c.clip_norm = 1.0  # global-norm clip per model; 0 disables
    c.critic_warmup = 0  # first N iterations update only the critic
    # --- reward ---
    c.kl_beta = 0.05  # β of the per-token KL penalty (paper)
    c.kl_estimator = "k1"  # k1 | k2 | k3
    c.kl_clip = 0.0  # clip the per-token KL estimate to [-c, c]; 0 = off
    c.reward_norm = "scale"  # none | scale (s / running std) | standard ((s - mean) / std)
    c.reward_clip = 0.8  # clip the normalised RM score to [-c, c]; 0 = off (the paper's 0.8)
    # --- GAE and losses ---
    c.gamma = 1.0
    c.lam = 0.95
    c.whiten_advantages = True
    c.clip_eps = 0.2  # policy ratio clip ε
    c.value_clip_eps = 0.2  # value clip ε_v
    c.vf_coef = 1.0  # critic loss weight (own optimizer: only matters with clipping)
    c.ent_coef = 0.0  # entropy bonus (logged always)
    c.target_kl = 0.0  # early stop: skip actor updates once approx KL > 1.5·target; 0 = off
    # --- logging / checkpoints ---
    c.save_every = 10  # iterations between checkpoints (plus the last); 0 = end only
    c.shift_hist_bins = 20  # the |Δr| histogram: bins over [0, shift_hist_max], + one overflow
    c.shift_hist_max = 4.0
    c.shift_log_values = True  # also log every |Δr| (a TensorBoard histogram of the raw values)
    # "module:function" of config -> fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [n],
    # logged (never trained on) as rollout/monitor_mean: e.g. the synthetic world's gold reward.
    c.monitor = ""
    c.export = True  # workdir/export/ppo (policy + tokenizer), export/ppo_critic
    return c
