"""An LLM judge over any OpenAI-compatible chat-completions endpoint, asked in both orders.

    judge = from_config({"base_url": "http://localhost:8000/v1", "model": "gpt-4o"})
    res = judge.compare(prompts, responses_a, responses_b)   # an LLMJudgeResult (a JudgeResult)
    res.win, res.tie, res.lose, res.outcomes                 # from A's point of view
    res.stats, judge.stats                                   # this call's / all calls' accounting

Each pair is asked twice, A shown first and then B shown first. The two verdicts are read from A's
point of view; the pair's outcome is their common verdict when they agree and a tie when they do
not (a verdict that flips with the order is position bias, MT-Bench style). The model must end
its answer with a line ``Verdict: A``, ``Verdict: B`` or ``Verdict: tie`` (surrounding ``*``,
``_`` or backticks and a final period are ignored; nothing else is guessed). An answer without
one is asked again up to ``parse_retries`` times and then counted as unparsable: the pair is a
tie in the tally and is counted separately in ``stats``.

Transport (``judge_http.ChatEndpoint``; this module holds no HTTP code): 408/409/429/5xx,
timeouts and connection errors are retried up to ``max_retries`` times with exponential backoff
(``backoff_s * 2**attempt``, jittered, at most ``max_backoff_s``) or, when the answer carries
``Retry-After`` (or ``retry-after-ms``), after that long (capped at ``max_backoff_s``). Other
errors (401, 404, 400, ...) stop at once with one line (``JudgeAPIError``). At most
``max_concurrency`` requests are in flight (a thread pool); each has ``timeout_s``.

Settings: ``JudgeSettings``, built from the config's ``judge`` block (every key not given takes
its default from ``defaults.judge()``, the one place the defaults live) and checked once when it
is built; ``config_lib.validate`` builds it before any stage runs when ``rlhf.judge='llm'``.

Cache: with ``cache_dir``, every final answer (parsed or unparsable) is a JSON file named by the
sha256 of (model, temperature, max_tokens, the template text's sha256, prompt, the response shown
first, the response shown second): the order is the response shown first. A resumed or repeated
comparison reads it and makes no new call. The API key is read only from the environment variable
named by ``api_key_env`` and is never written anywhere (not in the cache, the stats, an error or
a log line: error texts from the endpoint are redacted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from metarm_jax.config import defaults
from metarm_jax.eval.judge_http import ChatEndpoint
from metarm_jax.eval.judge_http import JudgeAPIError as JudgeAPIError  # re-exported
from metarm_jax.eval.judges import Judge, JudgeResult, _check_lengths
from metarm_jax.runtime import fileio
from metarm_jax.runtime.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
BUILTIN_TEMPLATES = ("helpful", "harmless", "summary")
PLACEHOLDERS = ("prompt", "response_a", "response_b")
CACHE_VERSION = 1
_FIELD = re.compile(r"\{(prompt|response_a|response_b)\}")
_VERDICT = re.compile(r"verdict\s*:\s*(a|b|tie)", re.I)

# Counters of `stats` (all ints), then the floats.
COUNTERS = (
    "pairs",  # pairs compared
    "judgments",  # distinct (pair, order) requests needed (<= 2 * pairs)
    "cache_hits",  # judgments read from the cache
    "calls",  # HTTP requests sent (every attempt: retries and re-asks included)
    "retries",  # requests repeated after a 408/409/429/5xx, a timeout or a connection error
    "rate_limited",  # 429 answers
    "server_errors",  # 5xx (and 408/409) answers
    "timeouts",  # requests that ran past timeout_s
    "connection_errors",  # requests that could not reach the endpoint
    "parse_retries",  # re-asks after an answer without a verdict line
    "unparsable_answers",  # judgments still without a verdict after parse_retries re-asks
    "unparsable_pairs",  # pairs with an unparsable judgment (ties in the tally)
    "consistent_pairs",  # both orders gave the same verdict (ties included)
    "flipped_pairs",  # A in one order, B in the other: position bias, a tie
    "one_sided_pairs",  # a tie in one order and a winner in the other: a tie
    "prompt_tokens",  # from the API's usage of every answered request
    "completion_tokens",
    "total_tokens",
)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from the answer's last non-empty line ``Verdict: X``; None otherwise."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    last = re.sub(r"[*_`]", "", lines[-1]).strip().rstrip(".").strip()
    m = _VERDICT.fullmatch(last)
    if m is None:
        return None
    return {"a": "A", "b": "B", "tie": "tie"}[m.group(1).lower()]


def load_template(template: str) -> tuple[str, str]:
    """(path, text) of a built-in template name or a template file; checks the placeholders."""
    if template in BUILTIN_TEMPLATES:
        path = os.path.join(TEMPLATE_DIR, f"{template}.txt")
    else:
        path = os.path.expanduser(template)
        if not os.path.isfile(path):
            raise ConfigError(
                f"judge.template={template!r} is neither one of {', '.join(BUILTIN_TEMPLATES)} "
                "nor a readable file; give a built-in name or the path of a template file."
            )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    missing = [f"{{{p}}}" for p in PLACEHOLDERS if f"{{{p}}}" not in text]
    if missing:
        raise ConfigError(
            f"judge.template {path}: no {', '.join(missing)}; a template must contain "
            "{prompt}, {response_a} and {response_b} (each replaced by the text as it is)."
        )
    return path, text


def render(template_text: str, prompt: str, response_a: str, response_b: str) -> str:
    """The template with its three fields filled in one pass (a field-like string inside a
    response is left as it is)."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _FIELD.sub(lambda m: values[m.group(1)], template_text)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class LLMJudgeResult(JudgeResult):
    """A JudgeResult with the call's accounting (`stats`) and, per prompt, the verdicts of the
    two orders (`verdicts[i] = (A shown first, B shown first)`, each 'A'/'B'/'tie' naming the
    preferred *response* from A's point of view, or None when unparsable)."""

    stats: dict = dataclasses.field(default_factory=dict)
    verdicts: tuple = ()


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """The LLM judge's settings: the ``judge`` config block, checked when built (one line of
    ConfigError for a value the judge cannot use, an unreadable template or an unset key
    variable). Its fields are the block's keys (``defaults.judge()``, with their meaning);
    ``from_config`` builds it from a block and resolves ``cache_dir``."""

    base_url: str
    model: str
    api_key_env: str
    template: str
    max_concurrency: int
    timeout_s: float
    max_retries: int
    backoff_s: float
    max_backoff_s: float
    parse_retries: int
    cache_dir: str
    temperature: float
    max_tokens: int

    @classmethod
    def from_config(cls, cfg=None, workdir: str | None = None) -> JudgeSettings:
        """Settings from a ``judge`` block (ConfigDict or dict; a key it lacks takes its default
        from ``defaults.judge()``). An empty ``cache_dir`` caches in ``<workdir>/llm_judge_cache``
        (no cache without a workdir)."""
        values = defaults.judge().to_dict()
        given = dict(cfg or {})
        unknown = sorted(set(given) - set(values))
        if unknown:
            raise ConfigError(f"judge: unknown key(s) {unknown}; the keys are {sorted(values)}.")
        values.update(given)
        if not values["cache_dir"] and workdir:
            values["cache_dir"] = os.path.join(workdir, "llm_judge_cache")
        return cls(**values)

    def __post_init__(self) -> None:  # every JudgeSettings is checked, however it is built
        if not self.base_url:
            raise ConfigError(
                "judge.base_url is empty; set the OpenAI-compatible endpoint, e.g. "
                "--config.judge.base_url=http://localhost:8000/v1"
            )
        if not self.model:
            raise ConfigError("judge.model is empty; set the endpoint's model name.")
        for key, lo in (
            ("max_concurrency", 1),
            ("max_retries", 0),
            ("parse_retries", 0),
            ("max_tokens", 0),
        ):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"judge.{key} must be an integer >= {lo}, got {v!r}.")
        for key, lo, strict in (
            ("timeout_s", 0, True),
            ("backoff_s", 0, True),
            ("temperature", 0, False),
            ("max_backoff_s", 0, False),
        ):
            v = getattr(self, key)
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if not number or not (v > lo if strict else v >= lo):
                op = ">" if strict else ">="
                raise ConfigError(f"judge.{key} must be a number {op} {lo}, got {v!r}.")
        load_template(self.template)
        if self.api_key_env and not os.environ.get(self.api_key_env, ""):
            raise ConfigError(
                f"judge.api_key_env={self.api_key_env!r}: that environment variable is not set; "
                "export the endpoint's key in it (the key is read only from the "
                "environment), or set judge.api_key_env='' for an endpoint without a key."
            )


def validate(config) -> None:
    """The rlhf stage's check of the judge (``stages.VALIDATORS``): with ``rlhf.judge='llm'``,
    the ``judge`` block must make a judge (endpoint, model, template, key variable, ranges)."""
    if config.rlhf.judge == "llm":
        JudgeSettings.from_config(config.judge)


class LLMJudge(Judge):
    """Pairwise LLM judge through a ``judge_http.ChatEndpoint`` (see the module docstring)."""

    def __init__(self, settings: JudgeSettings):
        self._endpoint = ChatEndpoint(
            settings.base_url,
            settings.model,
            api_key_env=settings.api_key_env,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            backoff_s=settings.backoff_s,
            max_backoff_s=settings.max_backoff_s,
            give_up_note=(
                f"; answers so far are cached in {settings.cache_dir}" if settings.cache_dir else ""
            ),
        )
        self.settings = settings
        self.base_url = settings.base_url
        self.model = settings.model
        self.api_key_env = settings.api_key_env
        self.template_path, self.template_text = load_template(settings.template)
        self.template = settings.template
        self.template_sha256 = _sha256(self.template_text)
        self.max_concurrency = int(settings.max_concurrency)
        self.timeout_s = float(settings.timeout_s)
        self.max_retries = int(settings.max_retries)
        self.cache_dir = settings.cache_dir
        self.temperature = float(settings.temperature)
        self.max_tokens = int(settings.max_tokens)
        self.parse_retries = int(settings.parse_retries)
        self.backoff_s = float(settings.backoff_s)
        self.max_backoff_s = float(settings.max_backoff_s)
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        self.stats["elapsed_s"] = 0.0

    def __repr__(self) -> str:
        return (
            f"LLMJudge(model={self.model!r}, base_url={self._endpoint.public_url!r}, "
            f"template={self.template!r})"
        )

    def describe(self) -> str:
        """One line for a report (no key)."""
        return (
            f"LLM judge {self.model} at {self._endpoint.public_url}, template {self.template} "
            f"(sha256 {self.template_sha256[:12]}), both orders, temperature {self.temperature:g}"
        )

    # ---------------------------------------------------------------------------------------
    # Internals.
    # ---------------------------------------------------------------------------------------

    def _count(self, stats: dict, key: str, n: int = 1) -> None:
        with self._lock:
            stats[key] += n

    def cache_key(self, prompt: str, first: str, second: str) -> str:
        """The cache entry's name: the request's identity (the order is which comes first)."""
        ident = [
            CACHE_VERSION,
            self.model,
            self.temperature,
            self.max_tokens,
            self.template_sha256,
            prompt,
            first,
            second,
        ]
        return _sha256(json.dumps(ident, ensure_ascii=False))

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, key[:2], f"{key}.json")

    def _cache_get(self, key: str) -> dict | None:
        if not self.cache_dir:
            return None
        try:
            with open(self._cache_path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "verdict" in entry else None

    def _request(self, content: str, stats: dict) -> str:
        """One answer's text (the endpoint retries transport failures), its usage counted."""
        done = self._endpoint.complete(
            content,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            count=lambda key: self._count(stats, key),
        )
        for k, n in done.usage.items():
            self._count(stats, k, n)
        return done.text

    def _judge(self, key: str, content: str, stats: dict) -> str | None:
        """Ask (re-asking while the answer has no verdict), cache the final answer."""
        attempts = 0
        for attempt in range(self.parse_retries + 1):
            answer = self._request(content, stats)
            attempts += 1
            verdict = parse_verdict(answer)
            if verdict is not None:
                break
            if attempt < self.parse_retries:
                self._count(stats, "parse_retries")
        if verdict is None:
            self._count(stats, "unparsable_answers")
            log.warning(
                "LLM judge: no verdict line after %d answers (last ends %r); counted as unparsable",
                attempts,
                self._endpoint.redact(answer[-80:]),
            )
        if self.cache_dir:
            fileio.write_json(
                self._cache_path(key),
                {
                    "version": CACHE_VERSION,
                    "model": self.model,
                    "template_sha256": self.template_sha256,
                    "verdict": verdict,
                    "answer": answer,
                    "attempts": attempts,
                },
                ensure_ascii=False,
            )
        return verdict

    # ---------------------------------------------------------------------------------------
    # The Judge interface.
    # ---------------------------------------------------------------------------------------

    def compare(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> LLMJudgeResult:
        _check_lengths(prompts, responses_a, responses_b)
        t0 = time.monotonic()
        stats: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        jobs: dict[str, str] = {}
        plan = []
        for p, a, b in zip(prompts, responses_a, responses_b):
            p, a, b = str(p), str(a), str(b)
            k_ab, k_ba = self.cache_key(p, a, b), self.cache_key(p, b, a)
            jobs.setdefault(k_ab, render(self.template_text, p, a, b))
            jobs.setdefault(k_ba, render(self.template_text, p, b, a))
            plan.append((k_ab, k_ba))
        stats["pairs"] = len(plan)
        stats["judgments"] = len(jobs)

        verdicts: dict[str, str | None] = {}
        todo = []
        for key in jobs:
            entry = self._cache_get(key)
            if entry is None:
                todo.append(key)
            else:
                verdicts[key] = entry["verdict"]
        stats["cache_hits"] = len(jobs) - len(todo)
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo))) as pool:
                futures = {pool.submit(self._judge, k, jobs[k], stats): k for k in todo}
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in done:
                    if f.exception() is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        self._merge(stats, t0)
                        raise f.exception()
                    verdicts[futures[f]] = f.result()

        outcomes = np.zeros(len(plan), np.int64)
        pair_verdicts = []
        to_a = {"A": 1, "B": -1, "tie": 0}
        for i, (k_ab, k_ba) in enumerate(plan):
            v1, v2 = verdicts[k_ab], verdicts[k_ba]
            # In the second order response B is shown as "A": swap back to A's point of view.
            v2a = {"A": "B", "B": "A", "tie": "tie"}.get(v2) if v2 is not None else None
            pair_verdicts.append((v1, v2a))
            if v1 is None or v2a is None:
                stats["unparsable_pairs"] += 1
                continue
            s1, s2 = to_a[v1], to_a[v2a]
            if s1 == s2:
                stats["consistent_pairs"] += 1
                outcomes[i] = s1
            elif s1 and s2:
                stats["flipped_pairs"] += 1
            else:
                stats["one_sided_pairs"] += 1
        self._merge(stats, t0)
        win, lose = int((outcomes > 0).sum()), int((outcomes < 0).sum())
        log.info(
            "LLM judge %s: %d pairs, %d judgments, %d cache hits, %d calls, %d retries, "
            "%d unparsable, %d flipped, %d prompt + %d completion tokens",
            self.model,
            stats["pairs"],
            stats["judgments"],
            stats["cache_hits"],
            stats["calls"],
            stats["retries"],
            stats["unparsable_pairs"],
            stats["flipped_pairs"],
            stats["prompt_tokens"],
            stats["completion_tokens"],
        )
        return LLMJudgeResult(
            win,
            len(plan) - win - lose,
            lose,
            None,
            outcomes,
            stats=dict(stats),
            verdicts=tuple(pair_verdicts),
        )

    def _merge(self, stats: dict, t0: float) -> None:
        stats["elapsed_s"] = round(time.monotonic() - t0, 3)
        with self._lock:
            for k, v in stats.items():
                self.stats[k] = self.stats.get(k, 0) + v


def from_config(cfg=None, workdir: str | None = None) -> LLMJudge:
    """An LLMJudge from a ``judge`` config block (``JudgeSettings.from_config``)."""
    return LLMJudge(JudgeSettings.from_config(cfg, workdir))
