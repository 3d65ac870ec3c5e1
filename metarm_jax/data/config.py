"""Defaults of the data layer; the lead's config system mounts them under `config.data`.

Every key the data layer reads lives here (unknown keys are rejected upstream). Importing this
module has no side effects beyond importing ml_collections.
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # --- preference pairs (the RM's X_t) ---
    c.dataset = "hh_rlhf"  # hh_rlhf | summarize_from_feedback | oasst1 | pku_saferlhf
    c.path = "Anthropic/hh-rlhf"  # hub name, or a local file / glob / directory
    c.name = ""  # datasets config name, e.g. 'comparisons' for summarize_from_feedback
    c.data_dir = ""  # hub subset, e.g. 'harmless-base' for hh-rlhf
    c.split = "train"
    c.eval_split = "test"
    # --- SFT examples ---
    c.sft_dataset = "hh_rlhf"  # hh_rlhf (prompt + chosen) | tldr_sft | sharegpt | oasst1
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
    c.meta_k = 5  # responses per prompt; fewer are padded with sample_mask = 0
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
