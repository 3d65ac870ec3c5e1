"""Llama-2 in Flax NNX (``llama``) and HF checkpoint import/export (``hf``)."""
