"""Defaults of the policy stages SFT and DPO; the lead mounts them as `config.sft`, `config.dpo`.

A stage's optimizer settings live in its own block, so that one run can train SFT at lr 2e-5
and the RM at 5e-6. `stage_train_config(config.train, config.sft)` builds the loop config of a
stage: `config.train` (the shared loop settings: optimizer, clipping, checkpoints, logging...)
with every key the stage block also has replaced by the stage's value. Keys only in the stage
block (`warmup_epochs`, `beta`, ...) are read by the stage itself.

Importing this module has no side effects beyond importing ml_collections.
"""

import ml_collections


def sft_config() -> ml_collections.ConfigDict:
    """The paper's SFT schedule (Llama-2-7B): lr 2e-5, 2 epochs, 0.3 epoch warm-up, then linear
    decay to zero; global batch 32 (`config.data.sft_batch_size`)."""
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


def dpo_config() -> ml_collections.ConfigDict:
    """DPO (Rafailov et al. 2023): β 0.1, lr 1e-6 with a 150-step linear warm-up, then constant;
    global batch `config.data.pref_batch_size` pairs."""
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
    c.ref_dtype = (
        ""  # storage dtype of the frozen reference: '' (= model.param_dtype) | bfloat16 | float32
    )
    c.export = True  # write workdir/export/dpo (HF LlamaForCausalLM + tokenizer)
    return c


def stage_train_config(
    train: ml_collections.ConfigDict, stage: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of `train` (config.train) with the keys that `stage` (config.sft, config.dpo, ...)
    also has set to the stage's values. Neither input is changed."""
    out = ml_collections.ConfigDict(train.to_dict())
    for key in stage:
        if key in out:
            out[key] = stage[key]
    return out
