"""Every default of the config, one function per block: the single place where a default lives.

``config_lib.base_config()`` mounts these blocks as ``config.<block>``; config files
(``configs/*.py``) start from it and change what they need, and ``--config.a.b=v`` overrides any
key. Keys documented as "'' = X" (or -1 / 0 = X) inherit X: ``resolve`` (below; also reached as
``config_lib.resolve``) fills every one of them once, before any stage runs, so the printed and
saved ``config.json`` shows the values the stages use. The allowed values and ranges of the keys
are checked by ``config_lib.validate``. This module imports nothing but os and ml_collections.
"""

from __future__ import annotations

import os

import ml_collections


def mesh() -> ml_collections.ConfigDict:
    """Mesh axis sizes; one may be -1 to take the remaining devices."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def distributed() -> ml_collections.ConfigDict:
    """Multi-host. "auto": initialise jax.distributed when a launcher's environment says so (TPU
    pod, SLURM, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables that
    launch/pod.sh sets); "on": always; "off": never."""
    return ml_collections.ConfigDict(
        dict(
            mode="auto",
            coordinator_address="",
            num_processes=0,
            process_id=-1,
            cpu_collectives="gloo",
            # a process that stops sending heartbeats for this long is declared lost and the
            # others stop (JAX's default is 100 s); a collective that fails on a dead peer's
            # connection stops them at once
            heartbeat_timeout_s=60,
        )
    )


def model() -> ml_collections.ConfigDict:
    """The model every stage starts from (``metarm_jax.models.from_config``)."""
    c = ml_collections.ConfigDict()
    c.preset = "tiny"  # metarm_jax.models.llama.PRESETS, used when hf_path is empty
    c.vocab_size = 0  # >0: override the preset's vocabulary (e.g. a small tokenizer's)
    c.hf_path = ""  # local HF checkpoint directory (config.json + safetensors)
    c.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.param_dtype = "float32"  # weight storage dtype
    # what the backward keeps of each layer: none | full | dots | dots_no_batch |
    # dots_no_batch_attn | qkv_attn (models.llama.REMAT_POLICIES)
    c.remat = "none"
    # attention: auto (cuDNN flash attention on a GPU where it applies, else XLA) | xla | cudnn
    # | einsum (the model's own; scores in the compute dtype)
    c.attention = "auto"
    c.scan_layers = True  # lax.scan over the stacked layers
    return c


def judge() -> ml_collections.ConfigDict:
    """The LLM judge (``rlhf.judge = "llm"``) over any OpenAI-compatible endpoint
    (docs/evaluation.md). The key is read from the environment variable ``api_key_env`` names and
    is never written anywhere."""
    c = ml_collections.ConfigDict()
    c.base_url = ""  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    c.model = ""  # the endpoint's model name, e.g. gpt-4o
    c.api_key_env = "OPENAI_API_KEY"  # the NAME of the variable; "" for an endpoint without a key
    c.template = "helpful"  # helpful | harmless | summary | a path to your own template file
    c.max_concurrency = 8
    c.timeout_s = 60.0  # per request
    c.max_retries = 6  # on 429 / 5xx / timeouts, exponential backoff (Retry-After respected)
    c.backoff_s = 1.0
    c.max_backoff_s = 60.0
    c.parse_retries = 2  # an unparsable verdict is asked again this often, then counted
    c.cache_dir = ""  # "" = <workdir>/llm_judge_cache: a resumed report makes no new calls
    c.temperature = 0.0
    c.max_tokens = 1024  # 0: not sent
    return c


def inspect() -> ml_collections.ConfigDict:
    """The ``inspect`` stage: load/build the model on the mesh, print its layout, run a forward."""
    return ml_collections.ConfigDict(dict(head="lm", batch_size=8, seq_len=32))


def data() -> ml_collections.ConfigDict:
    """The data layer: datasets, tokenization, iterators, bad-row policy (docs/data.md)."""
    c = ml_collections.ConfigDict()
    # --- preference pairs (the RM's X_t) ---
    c.dataset = "hh_rlhf"  # hh_rlhf | summarize_from_feedback | oasst1 | pku_saferlhf | trl
    c.path = "Anthropic/hh-rlhf"  # hub name, or a local file / glob / directory
    c.name = ""  # datasets config name, e.g. 'comparisons' for summarize_from_feedback
    c.data_dir = ""  # hub subset, e.g. 'harmless-base' for hh-rlhf
    c.split = "train"
    c.eval_split = "test"
    # --- SFT examples ---
    c.sft_dataset = "hh_rlhf"  # hh_rlhf (prompt + chosen) | tldr_sft | sharegpt | oasst1 | trl
    c.sft_path = "Anthropic/hh-rlhf"
    c.sft_name = ""
    c.sft_data_dir = ""
    c.sft_split = "train"
    # --- prompts (rollouts, meta sampling; OOD prompts in the OOD setting) ---
    c.prompt_dataset = "hh_rlhf"  # any pair/SFT dataset name, or 'prompts' (jsonl {"prompt": ...})
    c.prompt_path = "Anthropic/hh-rlhf"
    c.prompt_name = ""
    c.prompt_data_dir = ""
    c.prompt_split = "test"
    # --- meta examples (the RM's X_s), written by our sampler ---
    c.meta_path = ""  # jsonl/parquet written by metarm_jax.data.write_meta_dataset
    # --- dataset options ---
    c.conversation_format = "hh"  # 'hh' (\n\nHuman: / \n\nAssistant:) | 'chat_template'
    c.pku_preference = "helpful"  # 'helpful' (better_response_id) | 'harmless' (safer_response_id)
    c.oasst_lang = "en"  # '' keeps all languages
    # --- bad rows ---
    c.on_bad_record = "skip"  # 'skip' | 'error'
    c.max_skip_fraction = 0.01
    # --- tokenization ---
    c.tokenizer_path = ""  # local PreTrainedTokenizerFast directory
    c.max_length = 512
    c.bucket_lengths = (128, 256, 512)  # sequences padded to the smallest bucket that fits
    c.pad_side = "right"  # training batches; prompt batches are always left-padded
    c.add_bos = True
    c.max_prompt_length = 256  # prompt batches (roll-outs, meta sampling) keep the last N tokens
    # The RM, MetaRM and DPO stages compute each prompt once for its responses (a pair's two, a
    # meta prompt's k), packed in one row; exact (tests/test_shared_prompt.py). False: a row each.
    c.shared_prompt = True
    # The sft stage packs each batch's examples several to a row (segment ids, positions per
    # example): the same examples and loss per step, less padding (tests/test_shared_prompt.py).
    c.pack_sft = True
    # --- iterators ---
    c.shuffle = True
    c.num_epochs = 1  # 0 or None: repeat forever
    c.pref_seed = 0
    c.meta_seed = 1
    c.sft_seed = 2
    c.prompt_seed = 3
    c.pref_batch_size = 16  # global, pairs (n)
    c.meta_batch_size = 16  # global, prompts (m)
    c.sft_batch_size = 32  # global
    c.prompt_batch_size = 16  # global
    c.drop_remainder = True  # False: the last batch is padded, with an example_mask [n]
    c.num_threads = 2  # grain read threads (collation only; tokenization happens at load time)
    c.prefetch_buffer_size = 4
    return c


def train() -> ml_collections.ConfigDict:
    """The one train loop shared by RM, MetaRM, SFT, DPO and PPO (docs/training.md)."""
    c = ml_collections.ConfigDict()
    # The model comes from config.model (preset, or hf_path: an HF base / SFT / previous RM
    # directory; a CausalLM gets a fresh score head); seeds from config.seed and config.data.*_seed.
    # --- length of the run ---
    c.steps = 0  # optimizer steps; 0: derived from epochs and the dataset size
    c.epochs = 1.0
    # --- optimizer (AdamW via optax) ---
    c.optimizer = "adamw"  # adamw | adam | sgd
    c.lr = 5e-6  # α, peak learning rate (paper: 5e-6 for the RM)
    c.schedule = "linear"  # constant | linear | cosine  (decay after warm-up)
    c.warmup = 0.0  # warm-up: steps if >= 1, else a fraction of the run
    c.end_lr_factor = 0.0  # lr at the last step / peak lr (linear and cosine)
    c.b1 = 0.9
    c.b2 = 0.95
    c.eps = 1e-8
    c.weight_decay = 0.0  # decoupled; not applied to norms
    c.clip_norm = 1.0  # global gradient-norm clip; 0 disables
    # --- batches (the global sizes are config.data.pref_batch_size / meta_batch_size) ---
    c.grad_accum = 1  # micro-batches per optimizer step (each global batch is split in this many)
    # --- evaluation, logging, checkpoints ---
    c.eval_every = 100  # steps; 0: only at the end
    c.eval_batches = 0  # validation batches per evaluation; 0: the whole validation set
    c.log_every = 1  # steps between metrics.jsonl / TensorBoard rows
    c.save_every = 500  # steps; 0: only at the end
    c.keep = 3  # checkpoints kept (the last K)
    c.async_checkpoints = True
    c.nan_patience = 5  # stop after this many non-finite steps in a row (each one is skipped)
    c.progress = True  # tqdm bar (process 0 only)
    c.export = True  # rm/metarm: write workdir/export/rm (HF LlamaForSequenceClassification)
    # rm/metarm: reward centring (Eisenstein et al.; TRL's center_rewards_coefficient, 0.01
    # recommended): η adds η·mean((r_chosen + r_rejected)²) to the Bradley-Terry loss; 0 = off.
    c.center_rewards = 0.0
    return c


def meta() -> ml_collections.ConfigDict:
    """MetaRM (Algorithm 1): the ascent step and the meta samples."""
    c = ml_collections.ConfigDict()
    c.eta = 5e-6  # η, the ascent step on J (paper: 5e-6; sweep 1e-6, 5e-6, 1e-5)
    c.order = "first"  # 'first' (Algorithm 1) | 'second' (differentiate through the ascent)
    # How order='second' is computed (the same gradient): 'hvp' (∇L at θ', then the Hessian-
    # vector product of J forward over reverse; least memory) | 'linearize' | 'reverse'
    # (reverse over reverse through the ascent). bench/README.md has their time and memory.
    c.second_order = "hvp"
    # 'absolute': θ' = θ + η∇J (the paper; η is a raw gradient step). 'param_fraction' (beyond
    # the paper): ‖θ' − θ‖ = η‖θ‖, the same relative ascent at every model size.
    c.eta_mode = "absolute"
    # The step's direction: 'ascent' (MetaRM, +∇J). 'random' (a Gaussian direction of the same
    # norm, drawn per step) and 'descent' (−∇J) are the negative controls of the plan's arms
    # metarm_random and metarm_descent (rlhf/plan.py); 'descent' is refused outside that arm.
    c.direction = "ascent"
    c.measure_j_prime = False  # also log J(θ') (one extra forward on the meta batch per step)
    c.k = 5  # responses per meta prompt (the meta batches hold k rows per prompt; >= 2)
    c.hist_bins = 20  # bins of the |Δr| histogram in evaluation
    c.hist_max = 0.0  # upper edge of the histogram; 0: the largest |Δr| seen
    return c


def sampling() -> ml_collections.ConfigDict:
    """The one sampler: the paper's PPO roll-out and meta-sampling settings (docs/sampling.md)."""
    c = ml_collections.ConfigDict()
    c.temperature = 0.8  # 0 = greedy
    c.top_p = 0.9  # 1.0 = off
    c.top_k = 0  # 0 = off
    c.repetition_penalty = 1.1  # 1.0 = off; HF semantics
    c.max_new_tokens = 128
    c.min_new_tokens = 0  # stop tokens are masked out before this many new tokens
    c.stop_token_ids = ()  # extra stop tokens besides the model's eos
    c.prompt_bucket_min = 16  # prompt lengths are padded to max(this, next power of two)
    c.seed = 0
    return c


def build_meta() -> ml_collections.ConfigDict:
    """The ``build_meta`` stage: k responses per prompt from a policy -> a meta dataset."""
    c = ml_collections.ConfigDict()
    c.policy_path = ""  # HF LlamaForCausalLM dir; "" = model.hf_path ("" there too: the preset)
    c.policy_step = -1  # recorded on every row; -1 = trainer_state.json's global_step, else 0
    c.round = 0  # iterative-RLHF round recorded on every row
    # Prompt source; each "" = the same key of the data layer's prompt set (data.prompt_*).
    c.prompt_dataset = ""  # a reader name of metarm_jax.data (e.g. 'prompts', 'oasst1')
    c.prompt_path = ""
    c.prompt_split = ""
    c.skip_prompts = 0  # leave out the first N prompts (held-out splits of one prompt file)
    c.max_prompts = 0  # 0 = all prompts (after the skipped ones)
    c.output_path = ""  # .jsonl/.jsonl.gz/.parquet; "" = data.meta_path, else <workdir>/meta.jsonl
    c.k = 5  # responses sampled per prompt
    c.chunk_size = 256  # prompts per chunk file (the unit of resume)
    c.batch_size = 16  # prompts per sampler call (global; a multiple of data-parallel size)
    return c


def sft() -> ml_collections.ConfigDict:
    """SFT, the paper's schedule (Llama-2-7B): lr 2e-5, 2 epochs, 0.3 epoch warm-up, then linear
    decay to zero; global batch 32 (``data.sft_batch_size``). Keys that ``train`` also has override
    it for this stage (``train.common.stage_train_config``)."""
    c = ml_collections.ConfigDict()
    # --- override config.train for this stage ---
    c.steps = 0  # optimizer steps; 0: epochs x training examples / data.sft_batch_size
    c.epochs = 2.0
    c.lr = 2e-5
    c.schedule = "linear"  # constant | linear | cosine (decay after warm-up)
    c.warmup = 0.0  # as train.warmup (steps if >= 1, else a fraction of the run); see warmup_epochs
    c.end_lr_factor = 0.0  # linear decay to zero
    # --- SFT only ---
    c.warmup_epochs = (
        0.3  # > 0: warm-up of round(warmup_epochs x steps per epoch) steps (wins over warmup)
    )
    c.val_holdout = 0  # > 0: hold out the last N training examples for validation;
    #                    0: validate on split data.eval_split of data.sft_path
    c.export = True  # write workdir/export/sft (HF LlamaForCausalLM + tokenizer)
    return c


def dpo() -> ml_collections.ConfigDict:
    """DPO (Rafailov et al. 2023): β 0.1, lr 1e-6 with a 150-step linear warm-up, then constant;
    global batch ``data.pref_batch_size`` pairs. Keys that ``train`` also has override it."""
    c = ml_collections.ConfigDict()
    # --- override config.train for this stage ---
    c.steps = 0  # optimizer steps; 0: epochs x training pairs / data.pref_batch_size
    c.epochs = 1.0
    c.lr = 1e-6
    c.schedule = "constant"
    c.warmup = 150.0  # steps if >= 1, else a fraction of the run
    c.end_lr_factor = 0.0
    # --- DPO only ---
    c.beta = 0.1  # β of the implicit KL constraint (DPO paper); NOT the PPO KL β (0.05)
    c.label_smoothing = 0.0  # ε of conservative DPO; 0: plain DPO
    c.init = "model"  # where policy and reference start: 'model' (config.model) | 'sft'
    #                   (<workdir>/export/sft, written by the sft stage of the same run)
    # storage dtype of the frozen reference: '' = model.param_dtype | bfloat16 | float32
    c.ref_dtype = ""
    c.export = True  # write workdir/export/dpo (HF LlamaForCausalLM + tokenizer)
    return c


def ppo() -> ml_collections.ConfigDict:
    """The PPO stage (docs/ppo.md). Sampling settings come from ``sampling``, roll-out prompts
    from ``data.prompt_*``, checkpointing and logging from ``train``."""
    c = ml_collections.ConfigDict()
    # --- models (HF directories; '' = the default named) ---
    c.rm_path = ""  # the reward model (LlamaForSequenceClassification); required
    c.policy_path = ""  # actor start; '' = model.hf_path ('' there too: the preset)
    c.ref_path = ""  # frozen reference; '' = the policy's path
    c.critic_path = ""  # critic start (value head = the RM's score, bias 0); '' = rm_path
    c.frozen_dtype = ""  # param dtype of the frozen ref and RM: '' = model.param_dtype
    c.offload_frozen = False  # keep ref/RM params in host memory between roll-outs
    # --- the run ---
    c.iterations = 100  # roll-out + update rounds
    c.queries_per_iteration = 16  # prompts per roll-out (the prompt iterator's batch size)
    c.rollouts_per_query = 16  # responses sampled per prompt (paper: 16)
    c.max_new_tokens = 0  # response length cap; 0 = sampling.max_new_tokens
    c.ppo_epochs = 1  # passes over each roll-out buffer
    c.minibatch_size = 64  # roll-out rows per optimizer step (divides queries x roll-outs)
    c.seed = -1  # roll-out / minibatch seed; -1 = seed (the top-level key)
    # PPO iterations this arm ran before this stage (rlhf sets (round - 1) x iterations): the
    # prompt stream and the roll-out keys continue from there instead of starting again.
    c.iteration_offset = 0
    # >0: also export the actor every N iterations to export/ppo_iter<i> (i = iterations done);
    # vanilla PPO exports at each round boundary, so rounds compare at matched PPO budgets.
    c.export_every = 0
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
    # none | scale (s / running std) | standard ((s - running mean) / running std). Centred by
    # default: a BT reward's offset is arbitrary, and an uncentred one is a constant bonus that
    # the KL term then trades against (docs/ppo.md, "Reward normalisation").
    c.reward_norm = "standard"
    # clip the normalised score to [-c, c] (0 = off). 5 (standard deviations) cuts outliers only,
    # so PPO sees the RM's ranking; the paper's "clip value 0.8" is one reading of an ambiguous
    # sentence (configs/hh_rlhf.py keeps it); rollout/reward_clip_frac logs what a clip cuts.
    c.reward_clip = 5.0
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
    # "module:function" whose function of token ids REPLACES the RM's score as PPO's reward (the
    # ceiling arm: "metarm_jax.data.synthetic:gold_monitor", PPO on the world's gold); "" = the RM
    c.reward_fn = ""
    # "none" | "par": PAR (Fu et al. 2025), the RM's score replaced by the mean of
    # σ(r(x, y) − r(x, y_ref)) over rollouts_per_query references per prompt sampled from the
    # reference policy each iteration (core/ppo.py: preference_as_reward; the par arm)
    c.reward_shaping = "none"
    # An RM ensemble (Coste et al. 2024): >= 2 RM directories that all score every roll-out;
    # PPO's reward is their aggregation (rm_path then only names the critic's start, critic_path
    # ''). () = off: the one RM in rm_path. docs/ppo.md, "RM ensembles".
    c.reward_models = ()
    # mean | min (worst case) | uwo (mean - λ·variance over members, Coste et al.'s UWO) |
    # mean_std (mean - λ·std over members); core/ensemble.py
    c.ensemble_agg = "mean"
    c.ensemble_lambda = 1.0  # λ of uwo and mean_std
    # Put every member on one scale first: (score - its validation mean) / its validation std,
    # read from each export's scoring convention (config.json); a BT reward's offset is arbitrary.
    c.ensemble_standardize = True
    c.export = True  # workdir/export/ppo (policy + tokenizer), export/ppo_critic
    return c


def rlhf() -> ml_collections.ConfigDict:
    """The iterative rounds (``metarm_jax/rlhf/``: the plan of arms in ``rlhf/plan.py``), baselines,
    evaluation and judge."""
    c = ml_collections.ConfigDict()
    c.rounds = 4  # R (paper: 4 on HH-RLHF, 5 on TL;DR)
    # Each round's MetaRM starts from the previous round's RM ("previous", default: the meta
    # steps accumulate, as Algorithm 1 run round after round), from the vanilla RM ("vanilla":
    # each round adapts r_0 to the newest policy only), or from r_0's initialisation ("restart":
    # π_SFT with a fresh reward head seeded as r_0's, one pass each round: the paper's Figure 4,
    # where each round's RM accuracy rises from ~0.55 within its epoch).
    c.rm_init = "previous"
    # "train": meta samples, PPO and evaluation on config.data.prompt_* / eval_prompt_*.
    # "ood" (the paper's Figure 3 setting): all three on the OOD prompt set: meta samples and
    # PPO prompts from its ood_prompt_split, validation and test prompts from ood_eval_split
    # (held out as with valid_prompt_split "", or ood_valid_split when set).
    c.meta_prompts = "train"
    c.ood_prompt_dataset = "prompts"
    c.ood_prompt_path = ""
    c.ood_prompt_split = "train"
    c.ood_eval_split = "test"
    c.ood_valid_split = ""
    c.world = False  # write the synthetic world first and train on it (quickstart)
    # >0 and data.tokenizer_path empty: train a byte-level BPE tokenizer of this size on the
    # preference pairs first (runlocal variants; set model.vocab_size to the same number).
    c.tokenizer_vocab = 0
    c.sft = True  # train π_SFT (else config.model.hf_path is π_SFT)
    c.rm_path = ""  # a trained vanilla RM to start from (skips the rm step)
    # Arms besides MetaRM: "eta0" (the same rounds with η = 0: the control that differs only in
    # η), "oracle" (an RM on gold-labelled on-policy pairs; synthetic world only: the positive
    # control), "vanilla_ppo" (PPO against r_0, the same total budget), "dpo".
    c.baselines = ("eta0", "vanilla_ppo", "dpo")
    # The rival arms (opt-in baselines; docs/synthetic.md, "Rival arms"): ensemble_mean,
    # ensemble_worst, ensemble_uwo (PPO against an ensemble of ensemble_size RMs: r_0 and
    # ensemble_size - 1 more from π_SFT differing in seed and data order; λ = ppo.ensemble_lambda),
    # warm (their weight average), centred (an r_0 trained with train.center_rewards =
    # rlhf.center_rewards).
    c.ensemble_size = 4  # M, members of the ensemble and of WARM (r_0 is member 0)
    c.center_rewards = 0.01  # η of the centred arm's RM (TRL's recommended value)
    # Evaluation. Test prompts (eval_prompt_*; Tables 1-2, rewards, RM metrics) and validation
    # prompts (valid_prompt_split of the same source; they choose the best round), disjoint:
    # with valid_prompt_split "" the first valid_prompts test-source prompts are held out for
    # validation and the test set is the eval_prompts after them.
    c.eval_prompt_dataset = ""  # "" = data.prompt_dataset
    c.eval_prompt_path = ""  # "" = data.prompt_path
    c.eval_prompt_split = "test"
    c.eval_prompts = 100  # test prompts (fewer if the source has fewer)
    c.valid_prompt_split = ""
    c.valid_prompts = 100
    c.eval_k = 4  # samples per test prompt (the judge reads the first; RM metrics use all)
    # "gold" (synthetic world), "rm" (judge_rm_path), "llm" (config.judge), "auto" (gold in the
    # synthetic world, else rm)
    c.judge = "auto"
    c.judge_rm_path = ""  # an independent RM for the RM judge ("" : the vanilla RM)
    c.tie_margin = 0.05
    c.report_examples = 3  # test prompts shown in the report with every policy's first response
    c.bootstrap = 2000  # resamples of the prompts for the 95% intervals (paired bootstrap)
    c.diversity = (
        "self_bleu"  # Table 3: "" | "self_bleu" | "all" (+ embeddings: pip install -e .[eval])
    )
    c.human_export = False  # write blind pairs (best round vs SFT) for people: CSV + HTML page
    c.human_verdicts = ""  # a filled verdict CSV of that export: tabulated in the report
    # Keep every step's train checkpoints (weights, optimizer state, data position) after the
    # step has finished. False (default): a step's <step>/<stage>/checkpoints/ is removed once
    # its export and DONE.json are written; nothing reads them after that (docs/reliability.md).
    c.keep_checkpoints = False
    return c


def rm_eval() -> ml_collections.ConfigDict:
    """The ``rm_eval`` stage: a reward model scored on local files in RewardBench's schema
    (``metarm_jax/eval/rm_eval.py``; docs/evaluation.md, "RewardBench")."""
    c = ml_collections.ConfigDict()
    c.rm_path = ""  # the RM's HF directory; "" = <workdir>/export/rm (an rm/metarm stage before it)
    c.path = ""  # the rows: a .json/.jsonl/.jsonl.gz/.parquet file, a glob or a directory
    c.split = ""  # in a directory: only the files whose name says this split ("" = all)
    # "v1": RewardBench rows {prompt, chosen, rejected, subset}; "v2": RewardBench 2 rows
    # {prompt, chosen: [..], rejected: [..], subset, id}
    c.format = "v1"
    # "auto": the export's scoring convention (metarm_scoring.prompt_format); without one the
    # tokenizer's chat template if it has one, else "hh". "hh" | "chat_template" force one.
    c.conversation_format = "auto"
    c.batch_size = 16  # global, rows (prompts) per scoring batch
    c.output_dir = ""  # "" = <workdir>/rm_eval: rm_eval.json, rm_eval.md, scores.jsonl
    return c


def warm() -> ml_collections.ConfigDict:
    """The ``warm`` stage: one RM whose weights are the element-wise mean of several RMs
    fine-tuned from one initialisation (WARM, Ramé et al. 2024), written to
    <workdir>/export/rm like the rm stage's (``metarm_jax/train/rm.py: run_warm``)."""
    return ml_collections.ConfigDict(dict(rm_paths=()))  # >= 2 RM directories of one shape


def world() -> ml_collections.ConfigDict:
    """The synthetic world of the quickstart (docs/synthetic.md)."""
    c = ml_collections.ConfigDict()
    # Vocabulary and topics.
    c.num_symbols = 48  # symbols w00..w47 -> token ids 6..53 (vocab size 54)
    c.num_groups = 4  # topics of num_symbols // num_groups consecutive symbols
    # Prompts: length range (inclusive) and the probability that a token is from the topic.
    c.prompt_len = (4, 12)
    c.topic_purity = 0.75
    c.ood_prompt_len = (8, 12)  # the shifted (OOD) prompt distribution
    c.ood_topic_purity = 0.5
    # Base (pre-SFT) responses.
    c.response_len = (1, 16)  # inclusive
    c.base_good_frac = (0.0, 1.0)  # per response, P(token from G(x)) ~ U(lo, hi)
    c.saturated_good_frac = (0.9, 1.0)  # a policy that has saturated the coarse part
    # The fine (subtle) part: F(x) = the first fine_size symbols of the topic; a base response's
    # topic tokens are from F(x) with probability ~ U(base_fine_frac) (0: no fine part).
    c.fine_size = 0
    c.base_fine_frac = (0.0, 1.0)
    c.saturated_fine_frac = (0.0, 1.0)  # the same for the learnability probe (tests, analysis)
    c.base_sorted_prob = 0.3  # a response is sorted (random direction) with this probability
    c.base_repeat_prob = 0.1  # each token repeats its predecessor with this probability
    # Gold reward g = sum_k weight_k * part_k, every part in [0, 1].
    c.coarse_cap = 0.75  # coarse = min(good fraction / coarse_cap, 1)
    c.w_coarse = 1.0
    c.w_fine = 0.0  # weight of the fine part (fraction of response tokens in F(x))
    c.w_order = 0.3
    c.w_norep = 0.2
    c.w_length = 0.2
    c.length_offset = 0  # target length = len(prompt) + length_offset
    c.length_tolerance = 4.0
    # Preference labels: Bradley-Terry on g (0 = always the gold order).
    c.bt_temperature = 0.1
    # Sizes of the files write_world writes.
    c.num_sft = 4000
    c.num_train_pairs = 4000
    c.num_test_pairs = 500
    c.num_train_prompts = 2000
    c.num_eval_prompts = 200  # held out (judges, win rates): prompts/test
    c.num_valid_prompts = 200  # held out for choosing the best round: prompts/valid
    c.num_ood_prompts = 200  # prompts_ood/test.jsonl (evaluation in the OOD setting)
    c.num_ood_train_prompts = 400  # prompts_ood/train.jsonl (meta samples and PPO there)
    c.seed = 0
    return c


# ---------------------------------------------------------------------------------------------
# Resolution: the one place where "inherit" values become the values the stages use.


def _inherit(node, key: str, value, empty=("",)) -> None:
    if node[key] in empty:
        node[key] = value


def resolve(
    config: ml_collections.ConfigDict, workdir: str | None = None
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every "inherit" value filled (idempotent).

    ====================================  =============================================
    key (inherit marker)                  becomes
    ====================================  =============================================
    ppo.policy_path ('')                  model.hf_path ('' stays: the random preset)
    ppo.ref_path ('')                     ppo.policy_path
    ppo.critic_path ('')                  ppo.rm_path
    ppo.frozen_dtype ('')                 model.param_dtype
    ppo.max_new_tokens (0)                sampling.max_new_tokens
    ppo.seed (-1)                         seed
    dpo.ref_dtype ('')                    model.param_dtype
    build_meta.policy_path ('')           model.hf_path
    build_meta.prompt_{dataset,path,split} ('')   data.prompt_{dataset,path,split}
    build_meta.output_path ('')           data.meta_path, else <workdir>/meta.jsonl
    rlhf.eval_prompt_{dataset,path} ('')  data.prompt_{dataset,path}
    rm_eval.rm_path ('')                  <workdir>/export/rm (what rm/metarm export)
    rm_eval.output_dir ('')               <workdir>/rm_eval
    ====================================  =============================================

    ``workdir`` (default ``config.workdir``) places the default meta output. Blocks a config
    does not have are left alone.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    workdir = config.get("workdir", "") if workdir is None else workdir
    m, d = out.get("model"), out.get("data")
    if "ppo" in out and m is not None:
        p = out.ppo
        _inherit(p, "policy_path", m.hf_path)
        _inherit(p, "ref_path", p.policy_path)
        _inherit(p, "critic_path", p.rm_path)
        _inherit(p, "frozen_dtype", m.param_dtype)
        if "sampling" in out:
            _inherit(p, "max_new_tokens", out.sampling.max_new_tokens, empty=(0,))
        _inherit(p, "seed", out.seed, empty=(-1,))
    if "dpo" in out and m is not None:
        _inherit(out.dpo, "ref_dtype", m.param_dtype)
    if "build_meta" in out and d is not None:
        bm = out.build_meta
        if m is not None:
            _inherit(bm, "policy_path", m.hf_path)
        for key in ("dataset", "path", "split"):
            _inherit(bm, f"prompt_{key}", d[f"prompt_{key}"])
        default_meta = os.path.join(workdir, "meta.jsonl") if workdir else ""
        _inherit(bm, "output_path", d.meta_path or default_meta)
    if "rlhf" in out and d is not None:
        for key in ("dataset", "path"):
            _inherit(out.rlhf, f"eval_prompt_{key}", d[f"prompt_{key}"])
    if "rm_eval" in out and workdir:
        _inherit(out.rm_eval, "rm_path", os.path.join(workdir, "export", "rm"))
        _inherit(out.rm_eval, "output_dir", os.path.join(workdir, "rm_eval"))
    return out
