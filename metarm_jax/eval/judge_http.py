"""The LLM judge's transport: one chat completion from an OpenAI-compatible endpoint, retried.

    endpoint = ChatEndpoint("http://localhost:8000/v1", "gpt-4o", api_key_env="OPENAI_API_KEY",
                            timeout_s=60.0, max_retries=6, backoff_s=1.0, max_backoff_s=60.0)
    done = endpoint.complete("Which is better? ...", temperature=0.0, max_tokens=512, count=f)
    done.text, done.usage                   # the answer's text; {prompt,completion,total}_tokens

Each call sends one user message through the ``openai`` client (its own retries off). 408/409/429
/5xx, timeouts and connection errors are retried up to ``max_retries`` times with exponential
backoff (``backoff_s * 2**attempt``, jittered, at most ``max_backoff_s``) or, when the answer
carries ``Retry-After`` (or ``retry-after-ms``), after that long (capped at ``max_backoff_s``).
Other errors (401, 404, 400, ...) stop at once. Either way the failure is one line of
``JudgeAPIError``. ``count(key)`` (thread-safe where ``complete`` runs in several threads) is told
of every attempt (``calls``), each retried failure's kind (``rate_limited``, ``server_errors``,
``timeouts``, ``connection_errors``) and each repeat (``retries``).

The key is read only from the environment variable named by ``api_key_env``; texts from the
endpoint that go into an error are redacted (``redact``), and URLs in messages lose any
``user:password@`` (``public_url``).
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable

from metarm_jax.runtime.errors import UserError

RETRY_STATUS = frozenset({408, 409, 429})  # and every status >= 500
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9*_-]{4,}|\bBearer\s+\S+")


class JudgeAPIError(UserError):
    """The endpoint refused a request, or kept failing after every retry."""


def _retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _public_url(url: str) -> str:
    """The URL without user:password@ (for messages)."""
    p = urllib.parse.urlsplit(url)
    if p.username or p.password:
        p = p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))
    return urllib.parse.urlunsplit(p)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One answered request: the first choice's text ('' when none) and the API's token usage
    (``USAGE_KEYS``, 0 where the answer has none)."""

    text: str
    usage: dict[str, int]


class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint with the judge's retries (module docstring).
    ``give_up_note`` ends the message of the error raised when the retries run out."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        give_up_note: str = "",
    ):
        try:
            import openai
        except ImportError as e:
            raise UserError("the LLM judge needs the openai client: pip install -e .[eval]") from e
        secret = os.environ.get(api_key_env, "") if api_key_env else ""
        # (checked by JudgeSettings); the client needs a non-empty key, keyless servers ignore it
        secret = secret or "no-key"
        self._openai = openai
        self._secret = secret
        self.base_url = base_url
        self.public_url = _public_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.give_up_note = give_up_note
        self._client = openai.OpenAI(
            api_key=secret, base_url=base_url, timeout=self.timeout_s, max_retries=0
        )

    def redact(self, text) -> str:
        """``text`` on one line, at most 300 characters, without the key or anything key-like."""
        text = str(text)
        if len(self._secret) >= 8:
            text = text.replace(self._secret, "***")
        text = _KEYLIKE.sub("***", text)
        text = " ".join(text.split())
        return text[:300]

    def complete(
        self,
        content: str,
        *,
        temperature: float,
        max_tokens: int,
        count: Callable[[str], None] = lambda key: None,
    ) -> Completion:
        """The answer to one user message (``max_tokens`` 0: the endpoint's own limit), retrying
        transport failures; JudgeAPIError when refused or out of retries."""
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            count("calls")
            wait_s = None
            try:
                resp = self._client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": content}],
                    temperature=temperature,
                    **({"max_tokens": max_tokens} if max_tokens else {}),
                )
            except openai.APITimeoutError:
                kind, what = "timeouts", f"no answer within {self.timeout_s:g} s"
            except openai.APIConnectionError as e:
                kind, what = "connection_errors", f"connection failed ({self.redact(e)})"
            except openai.APIStatusError as e:
                status = e.status_code
                what = f"HTTP {status}: {self.redact(e.message)}"
                if status not in RETRY_STATUS and status < 500:
                    hint = (
                        f" (check the key in ${self.api_key_env})" if status in (401, 403) else ""
                    )
                    raise JudgeAPIError(
                        f"LLM judge: {self.public_url} refused model {self.model!r}: {what}{hint}."
                    ) from None
                kind = "rate_limited" if status == 429 else "server_errors"
                wait_s = _retry_after(getattr(e.response, "headers", None))
            else:
                usage = getattr(resp, "usage", None)
                choices = getattr(resp, "choices", None) or []
                return Completion(
                    text=(choices[0].message.content or "") if choices else "",
                    usage={k: int(getattr(usage, k, 0) or 0) for k in USAGE_KEYS},
                )
            count(kind)
            if attempt == self.max_retries:
                tries = self.max_retries + 1
                raise JudgeAPIError(
                    f"LLM judge: {self.public_url} failed {tries} "
                    f"time{'s' if tries > 1 else ''}, last {what}; rerun to resume"
                    f"{self.give_up_note}."
                ) from None
            count("retries")
            if wait_s is None:
                wait_s = self.backoff_s * 2**attempt * (0.5 + 0.5 * random.random())
            time.sleep(min(wait_s, self.max_backoff_s))
        raise AssertionError("unreachable")
