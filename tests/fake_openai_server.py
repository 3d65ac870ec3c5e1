"""A local OpenAI-compatible chat-completions server for the LLM-judge tests (stdlib only).

    python tests/fake_openai_server.py [--api-key KEY] [--rule longer|always_a] [--latency S]

It binds 127.0.0.1 on a free port and prints ``PORT <n>`` on stdout once it is serving.

  POST /v1/chat/completions  reads the two responses between the templates' markers
                             ``[Response A]`` ... ``[End of Response A]`` (and B) and answers
                             ``Verdict: A|B|tie`` by the rule: ``longer`` prefers the longer
                             response (equal lengths: tie); ``always_a`` always says A (pure
                             position bias). A prompt containing ``@@MALFORMED@@`` always gets
                             an answer without a verdict line.
  POST /control              JSON {"rule": ..., "latency": s, "faults": [...]}: set the rule or
                             the latency, and queue faults, each used by the next request:
                             ``429`` (with ``Retry-After: 1``; ``429:S`` sets S), ``500``,
                             ``sleep:S`` (answer after S seconds, past the client's timeout),
                             ``malformed`` (a 200 answer without a verdict).
  GET  /stats                JSON: requests (all /v1 requests), by_status, max_inflight, and a log
                             of [time, status, fault] per request.
  POST /reset                zero the counters and the fault queue.

A wrong or missing ``Authorization: Bearer`` key gets a 401 whose message echoes the key it got
(as some real endpoints echo part of it), so the tests can check that the judge redacts it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_A = re.compile(r"\[Response A\]\n(.*?)\n\[End of Response A\]", re.S)
_B = re.compile(r"\[Response B\]\n(.*?)\n\[End of Response B\]", re.S)


class State:
    def __init__(self, api_key: str, rule: str, latency: float):
        self.lock = threading.Lock()
        self.api_key = api_key
        self.rule = rule
        self.latency = latency
        self.reset()

    def reset(self):
        self.faults: list[str] = []
        self.requests = 0
        self.by_status: dict[str, int] = {}
        self.inflight = 0
        self.max_inflight = 0
        self.log: list[list] = []


def _verdict(rule: str, text: str) -> str:
    if "@@MALFORMED@@" in text:
        return "Both answers have merits; I cannot decide.\nMy verdict would be one of them."
    a, b = _A.search(text), _B.search(text)
    if not (a and b):
        return "I could not find the two responses.\nVerdict: tie"
    if rule == "always_a":
        return "Response A is clearly better.\nVerdict: A"
    la, lb = len(a.group(1)), len(b.group(1))
    v = "A" if la > lb else "B" if lb > la else "tie"
    return f"Comparing the two: {la} vs {lb} characters.\n\nVerdict: {v}"


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, obj, headers: dict | None = None):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            if self.path == "/stats":
                with state.lock:
                    self._send(
                        200,
                        {
                            "requests": state.requests,
                            "by_status": state.by_status,
                            "max_inflight": state.max_inflight,
                            "log": state.log,
                        },
                    )
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = self._body()
            if self.path == "/control":
                with state.lock:
                    state.rule = body.get("rule", state.rule)
                    state.latency = float(body.get("latency", state.latency))
                    state.faults += list(body.get("faults", []))
                self._send(200, {"ok": True})
                return
            if self.path == "/reset":
                with state.lock:
                    state.reset()
                self._send(200, {"ok": True})
                return
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            with state.lock:
                state.requests += 1
                state.inflight += 1
                state.max_inflight = max(state.max_inflight, state.inflight)
                fault = state.faults.pop(0) if state.faults else ""
                rule, latency = state.rule, state.latency
            try:
                status = self._complete(body, fault, rule, latency)
            finally:
                with state.lock:
                    state.inflight -= 1
                    state.by_status[str(status)] = state.by_status.get(str(status), 0) + 1
                    state.log.append([time.time(), status, fault])

        def _complete(self, body: dict, fault: str, rule: str, latency: float) -> int:
            got = self.headers.get("Authorization", "")
            if state.api_key and got != f"Bearer {state.api_key}":
                msg = f"Incorrect API key provided: {got.removeprefix('Bearer ')}"
                self._send(401, {"error": {"message": msg, "type": "invalid_request_error"}})
                return 401
            if fault.startswith("429"):
                wait = fault.partition(":")[2] or "1"
                self._send(
                    429,
                    {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                    {"Retry-After": wait},
                )
                return 429
            if fault == "500":
                self._send(500, {"error": {"message": "internal error", "type": "server"}})
                return 500
            if fault.startswith("sleep:"):
                time.sleep(float(fault.partition(":")[2]))
            if latency:
                time.sleep(latency)
            text = "".join(m.get("content", "") for m in body.get("messages", []))
            answer = "No verdict here, sorry." if fault == "malformed" else _verdict(rule, text)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{state.requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(text.split()),
                        "completion_tokens": len(answer.split()),
                        "total_tokens": len(text.split()) + len(answer.split()),
                    },
                },
            )
            return 200

    return Handler


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--api-key", default="")
    p.add_argument("--rule", default="longer", choices=["longer", "always_a"])
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args(argv)
    state = State(args.api_key, args.rule, args.latency)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
