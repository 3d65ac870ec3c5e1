"""Llama-2 in Flax NNX (``llama``), HF checkpoint import/export (``hf``), and the one model
factory every stage uses (``from_config``, ``split``; see ``models/factory.py``)."""

from metarm_jax.models.factory import Split, check_vocab, from_config, model_config, split

__all__ = ["Split", "check_vocab", "from_config", "model_config", "split"]
