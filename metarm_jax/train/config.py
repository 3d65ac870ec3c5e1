"""Defaults of the training stages; the lead's config system mounts them as `config.train`
(the one generic loop, shared by RM, MetaRM, SFT, DPO, PPO) and `config.meta` (MetaRM only).

Every key the loop and the RM stages read lives here. Importing this module has no side effects
beyond importing ml_collections.
"""

import ml_collections


def train_config() -> ml_collections.ConfigDict:
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
    c.export = True  # write workdir/export/rm as an HF LlamaForSequenceClassification
    # --- synthetic preference task (tests/quickstart without the data layer) ---
    c.synthetic = False
    c.synthetic_train = 512  # pairs
    c.synthetic_val = 128
    c.synthetic_seq_len = 24
    c.synthetic_meta = 64  # meta prompts (x meta.k responses), shifted
    c.synthetic_shift = 1.0  # fraction of meta response tokens from the shifted range
    return c


def meta_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.eta = 5e-6  # η, the ascent step on J (paper: 5e-6; sweep 1e-6, 5e-6, 1e-5)
    c.order = "first"  # 'first' (Algorithm 1) | 'second' (differentiate through the ascent)
    c.k = 5  # responses per meta prompt (must equal config.data.meta_k)
    c.hist_bins = 20  # bins of the |Δr| histogram in evaluation
    c.hist_max = 0.0  # upper edge of the histogram; 0: the largest |Δr| seen
    return c
