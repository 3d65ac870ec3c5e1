"""Test-session setup: 8 simulated CPU devices (set before JAX is imported anywhere)."""

import os

from tests.xla_env import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("METARM_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    return SHARED


# The longest files first: with two workers (pyproject.toml: -n 2 --dist loadfile) a long file that
# starts last would run alone at the end. The order is the same on every worker.
LONG_FIRST = (
    "test_rlhf.py",
    "test_multihost.py",
    "test_reliability.py",
    "test_ppo_stage.py",
    "test_sft_dpo.py",
    "test_checkpoint.py",
    "test_rm_stages.py",
    "test_real_model.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as before
