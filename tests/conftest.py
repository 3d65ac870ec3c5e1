"""Test-session setup: 8 simulated CPU devices and one persistent XLA compilation cache (both set
before JAX is imported anywhere, and inherited by every subprocess a test starts)."""

import os

from tests.xla_env import xla_flags

# Many tests run the same tiny programs in fresh processes (the soak's restarts, the multi-host
# comparison's single process, a resumed run); with a cache each compiles once per session.
# A cached executable is the program XLA compiled, so results are the same bit for bit (a tiny
# iterative run's report and exports compared identical, cache cold vs warm). Off with
# JAX_ENABLE_COMPILATION_CACHE=false; elsewhere with JAX_COMPILATION_CACHE_DIR.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax-cc")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 2**30))  # LRU beyond 2 GiB

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pathlib
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("METARM_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    return SHARED


FAKE_JUDGE_KEY = "sk-test-FAKE-7c1e9b2d4a6f8e0c3b5d7f9a"


@pytest.fixture(scope="session")
def server():
    """A local OpenAI-compatible server process (tests/fake_openai_server.py) with the fake key
    ``FAKE_JUDGE_KEY``; yields its base URL (``<url>/v1`` is the endpoint)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "fake_openai_server.py"),
            "--api-key",
            FAKE_JUDGE_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the server prints PORT <n> once it listens
        assert line.startswith("PORT "), (line, proc.stderr.read() if proc.poll() else "")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{url}/stats", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the fake server did not come up"
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


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
