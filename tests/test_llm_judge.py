"""The LLM judge against a local OpenAI-compatible server process (tests/fake_openai_server.py):
both orders, position bias, strict verdicts, retries (429 + Retry-After, 500, timeouts), the
cache, the concurrency limit, and a fake key that must appear in no file the run wrote."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("openai", reason="the LLM judge needs openai (pip install -e .[eval])")

from metarm_jax.config import defaults
from metarm_jax.config import lib as config_lib
from metarm_jax.eval import llm_judge
from metarm_jax.eval.judges import JudgeResult
from metarm_jax.eval.llm_judge import JudgeAPIError, JudgeSettings, LLMJudge, parse_verdict
from metarm_jax.runtime import fileio
from metarm_jax.runtime.errors import ConfigError, UserError
from tests.conftest import FAKE_JUDGE_KEY, REPO

KEY = FAKE_JUDGE_KEY
ENV = "METARM_TEST_JUDGE_KEY"


def _post(url: str, obj: dict) -> None:
    req = urllib.request.Request(
        url, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5).read()


def _stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{url}/stats", timeout=5).read())


@pytest.fixture
def srv(server, monkeypatch):
    """The server, reset, with the longer-wins rule; the fake key in the environment."""
    _post(f"{server}/reset", {})
    _post(f"{server}/control", {"rule": "longer", "latency": 0.0})
    monkeypatch.setenv(ENV, KEY)
    return server


def _judge(url: str, **kw) -> LLMJudge:
    args = dict(
        api_key_env=ENV,
        max_concurrency=4,
        timeout_s=5.0,
        max_retries=3,
        backoff_s=0.01,
        max_backoff_s=2.0,
    )
    args.update(kw)
    return llm_judge.from_config(dict(base_url=f"{url}/v1", model="fake-judge", **args))


PROMPTS = ["\n\nHuman: q1\n\nAssistant:", "\n\nHuman: q2\n\nAssistant:", "q3", "q4"]
A = ["a long and detailed answer", "short", "same", "another long answer here"]
B = ["brief", "a much longer answer than A", "sama", "tiny"]
EXPECTED = [1, -1, 0, 1]


def test_parse_verdict_is_strict():
    assert parse_verdict("Reasons.\n\nVerdict: A") == "A"
    assert parse_verdict("Reasons.\nverdict: b\n\n") == "B"
    assert parse_verdict("x\n**Verdict: tie**") == "tie"
    assert parse_verdict("x\nVerdict: `A`.") == "A"
    for bad in (
        "",
        None,
        "Verdict: A\nand some words after",  # not the last line
        "Verdict: A or B",
        "I prefer A",
        "Verdict: C",
        "The verdict: A is better",
    ):
        assert parse_verdict(bad) is None, bad


def test_templates(tmp_path):
    for name in llm_judge.BUILTIN_TEMPLATES:
        path, text = llm_judge.load_template(name)
        assert path.endswith(f"{name}.txt")
        assert all(f"{{{p}}}" in text for p in llm_judge.PLACEHOLDERS)
        assert "Verdict: A" in text and "Verdict: tie" in text
    own = tmp_path / "mine.txt"
    own.write_text("P={prompt} A={response_a} B={response_b}")
    assert llm_judge.load_template(str(own))[1].startswith("P=")
    # Filled in one pass: a field name inside a response stays as it is.
    assert llm_judge.render(own.read_text(), "p", "{response_b}", "b") == "P=p A={response_b} B=b"
    (tmp_path / "bad.txt").write_text("only {prompt} and {response_a}")
    with pytest.raises(ConfigError, match=r"no \{response_b\}"):
        llm_judge.load_template(str(tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match="neither one of helpful"):
        llm_judge.load_template("helpfull")


def test_both_orders_and_the_tally(srv):
    judge = _judge(srv)
    res = judge.compare(PROMPTS, A, B)
    assert isinstance(res, JudgeResult)
    np.testing.assert_array_equal(res.outcomes, EXPECTED)
    assert (res.win, res.tie, res.lose) == (2, 1, 1)
    s = res.stats
    assert s["pairs"] == 4 and s["judgments"] == 8 and s["calls"] == 8
    assert s["consistent_pairs"] == 4 and s["flipped_pairs"] == 0
    assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0
    assert s["total_tokens"] == s["prompt_tokens"] + s["completion_tokens"]
    assert _stats(srv)["requests"] == 8
    assert res.verdicts[0] == ("A", "A") and res.verdicts[1] == ("B", "B")
    # From B's point of view everything is mirrored.
    np.testing.assert_array_equal(judge.compare(PROMPTS, B, A).outcomes, -np.asarray(EXPECTED))
    assert judge.stats["calls"] == 16 and judge.stats["pairs"] == 8


def test_a_verdict_that_flips_with_the_order_is_a_tie(srv):
    _post(f"{srv}/control", {"rule": "always_a"})
    res = _judge(srv).compare(PROMPTS, A, B)
    assert (res.win, res.tie, res.lose) == (0, 4, 0)
    assert res.stats["judgments"] == 8 and res.stats["flipped_pairs"] == 4
    assert res.verdicts[0] == ("A", "B")


def test_cache_second_run_makes_no_calls(srv, tmp_path):
    cache = tmp_path / "cache"
    first = _judge(srv, cache_dir=str(cache)).compare(PROMPTS, A, B)
    assert _stats(srv)["requests"] == 8
    again = _judge(srv, cache_dir=str(cache)).compare(PROMPTS, A, B)
    assert _stats(srv)["requests"] == 8  # nothing new reached the server
    assert again.stats["cache_hits"] == 8 and again.stats["calls"] == 0
    np.testing.assert_array_equal(first.outcomes, again.outcomes)
    assert len(list(cache.rglob("*.json"))) == 8
    # Another template (or model) is another cache entry.
    own = tmp_path / "t.txt"
    own.write_text(llm_judge.load_template("helpful")[1] + "\nBe brief.")
    _judge(srv, cache_dir=str(cache), template=str(own)).compare(PROMPTS[:1], A[:1], B[:1])
    assert _stats(srv)["requests"] == 10


def test_429_waits_for_retry_after(srv):
    _post(f"{srv}/control", {"faults": ["429:1"]})
    res = _judge(srv, max_concurrency=1).compare(PROMPTS[:1], A[:1], B[:1])
    assert res.outcomes.tolist() == [1]
    s = res.stats
    assert (s["calls"], s["retries"], s["rate_limited"]) == (3, 1, 1)
    log = _stats(srv)["log"]
    assert [r[1] for r in log] == [429, 200, 200]
    assert log[1][0] - log[0][0] >= 0.95  # Retry-After: 1 was respected


def test_500_and_timeout_are_retried(srv):
    _post(f"{srv}/control", {"faults": ["500", "sleep:2"]})
    res = _judge(srv, max_concurrency=1, timeout_s=0.5).compare(PROMPTS[:2], A[:2], B[:2])
    assert res.outcomes.tolist() == [1, -1]
    s = res.stats
    assert s["server_errors"] == 1 and s["timeouts"] == 1 and s["retries"] == 2
    assert s["calls"] == 6


def test_retries_run_out_with_one_line(srv, tmp_path):
    _post(f"{srv}/control", {"faults": ["500"] * 3})
    judge = _judge(srv, max_concurrency=1, max_retries=2, cache_dir=str(tmp_path))
    with pytest.raises(JudgeAPIError) as e:
        judge.compare(PROMPTS[:1], A[:1], B[:1])
    msg = str(e.value)
    assert "\n" not in msg and "failed 3 times" in msg and "HTTP 500" in msg
    # Rerunning resumes: the fault queue is empty now.
    assert judge.compare(PROMPTS[:1], A[:1], B[:1]).outcomes.tolist() == [1]


def test_malformed_verdicts_are_retried_then_counted(srv):
    _post(f"{srv}/control", {"faults": ["malformed"]})
    res = _judge(srv, max_concurrency=1).compare(PROMPTS[:1], A[:1], B[:1])
    assert res.outcomes.tolist() == [1]
    assert res.stats["parse_retries"] == 1 and res.stats["unparsable_answers"] == 0
    # A prompt the server never answers with a verdict: re-asked twice, then unparsable (a tie).
    res = _judge(srv, parse_retries=2).compare(["@@MALFORMED@@", "q"], ["x", "xx"], ["yy", "y"])
    assert res.outcomes.tolist() == [0, 1]
    s = res.stats
    assert s["unparsable_answers"] == 2 and s["unparsable_pairs"] == 1
    assert s["parse_retries"] == 4 and s["calls"] == 2 * 3 + 2
    assert res.verdicts[0] == (None, None)
    assert (res.win, res.tie, res.lose) == (1, 1, 0)


def test_concurrency_is_limited(srv):
    _post(f"{srv}/control", {"latency": 0.3})
    n = 6
    t0 = time.monotonic()
    res = _judge(srv, max_concurrency=3).compare(
        [f"q{i}" for i in range(n)], ["long answer"] * n, ["short"] * n
    )
    took = time.monotonic() - t0
    assert res.win == n
    assert _stats(srv)["max_inflight"] == 3
    assert took < 2 * n * 0.3 * 0.75  # well under the sequential time


def test_the_key_is_never_written(srv, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    work = tmp_path / "run"
    judge = llm_judge.from_config(
        {
            "base_url": f"{srv}/v1",
            "model": "fake-judge",
            "api_key_env": ENV,
            "max_retries": 2,
            "backoff_s": 0.01,
        },
        workdir=str(work),
    )
    assert judge.cache_dir == str(work / "llm_judge_cache")
    _post(f"{srv}/control", {"faults": ["malformed", "429:0", "500"]})
    res = judge.compare(PROMPTS, A, B)
    report = {"judge": judge.describe(), "repr": repr(judge), "stats": judge.stats}
    report["result"] = {"win": res.win, "verdicts": res.verdicts, "stats": res.stats}
    fileio.write_json(str(work / "report.json"), report)
    # A wrong key: the server echoes it back in its 401; the judge's error must not.
    monkeypatch.setenv(ENV, "sk-wrong-0123456789")
    bad = llm_judge.from_config({"base_url": f"{srv}/v1", "model": "m", "api_key_env": ENV})
    with pytest.raises(JudgeAPIError) as e:
        bad.compare(PROMPTS[:1], A[:1], B[:1])
    assert "401" in str(e.value) and "sk-wrong-0123456789" not in str(e.value)
    (work / "error.txt").write_text(str(e.value))
    (work / "log.txt").write_text(caplog.text)
    out = capsys.readouterr()
    (work / "console.txt").write_text(out.out + out.err)
    files = [p for p in work.rglob("*") if p.is_file()]
    assert len(files) >= 8 + 4
    for p in files:
        assert KEY not in p.read_text(encoding="utf-8", errors="replace"), p


def test_config_errors_are_one_line(srv, monkeypatch):
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=f"{ENV}.*not set") as e:
        _judge(srv)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="judge.base_url is empty"):
        JudgeSettings.from_config({"model": "m", "api_key_env": ""})
    with pytest.raises(ConfigError, match="max_concurrency"):
        llm_judge.from_config(
            {
                "base_url": "http://127.0.0.1:1/v1",
                "model": "m",
                "api_key_env": "",
                "max_concurrency": 0,
            }
        )
    with pytest.raises(ConfigError, match="unknown key"):
        JudgeSettings.from_config({"base_url": "u", "model": "m", "api_key_env": "", "retries": 1})
    # A keyless endpoint: api_key_env='' sends a placeholder (this server wants the key: 401).
    keyless = JudgeSettings.from_config({"base_url": f"{srv}/v1", "model": "m", "api_key_env": ""})
    with pytest.raises(UserError, match="HTTP 401"):
        LLMJudge(keyless).compare(["p"], ["a"], ["b"])


def test_the_settings_take_every_default_from_defaults_py(monkeypatch):
    """The judge has no default of its own: a key the block lacks takes defaults.judge()'s value
    (changing a default there changes the judge), and the fields are exactly the block's keys."""
    block = defaults.judge()
    assert sorted(f.name for f in dataclasses.fields(JudgeSettings)) == sorted(block)
    monkeypatch.setenv(ENV, KEY)
    s = JudgeSettings.from_config({"base_url": "u", "model": "m", "api_key_env": ENV})
    assert {k: getattr(s, k) for k in block if k not in ("base_url", "model", "api_key_env")} == {
        k: v for k, v in block.items() if k not in ("base_url", "model", "api_key_env")
    }
    changed = defaults.judge()
    changed.max_retries = 11
    monkeypatch.setattr(defaults, "judge", lambda: changed)
    assert (
        JudgeSettings.from_config({"base_url": "u", "model": "m", "api_key_env": ENV}).max_retries
        == 11
    )


def test_the_judge_settings_are_checked_before_any_stage(monkeypatch, tmp_path):
    """config_lib.validate checks the judge block (endpoint, key variable, template) when the rlhf
    stage will use the LLM judge, and leaves it alone otherwise."""
    config = config_lib.load_config_file(str(REPO / "configs" / "quickstart.py"))
    config.rlhf.judge = "llm"
    with pytest.raises(ConfigError, match="judge.base_url is empty"):
        config_lib.validate(config)
    config.judge.base_url, config.judge.model, config.judge.api_key_env = "http://x/v1", "m", ENV
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{ENV}.*not set"):
        config_lib.validate(config)
    monkeypatch.setenv(ENV, KEY)
    config.judge.template = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="neither one of"):
        config_lib.validate(config)
    config.judge.template = "harmless"
    config_lib.validate(config)
    config.pipeline = ("sft",)  # no rlhf stage: the judge is not used, not checked
    config.judge.base_url = ""
    config_lib.validate(config)


def test_the_docs_show_the_templates_in_full():
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    for name in llm_judge.BUILTIN_TEMPLATES:
        assert llm_judge.load_template(name)[1].strip() in doc, name
