"""A local stand-in for the Gemini ``generateContent`` REST endpoint, for tests and benchmarks.

It listens on ``127.0.0.1`` (a free port chosen by the OS) in a background thread and speaks just
enough of ``POST /v1beta/models/{model}:generateContent`` for ``google-genai`` to work against it
(``HttpOptions(base_url=server.base_url)``). Nothing here touches the network beyond loopback.

Answers come from a scripted queue per prompt: ``server.script("NOTE-7", Reply.error(429),
Reply.json({...}))`` makes the next two requests whose prompt text contains ``"NOTE-7"`` get a
429 and then that JSON; when a prompt's queue is empty the default ``responder`` answers. Faults:
HTTP errors (429, 500, ...), time-outs (the handler sleeps longer than the client waits),
malformed or truncated JSON text, empty candidates, blocked prompts (``promptFeedback``) and
blocked candidates (``finishReason: SAFETY``); ``latency`` adds a fixed delay to every request.

Every request is counted (``hits``) and kept (``requests``: path, headers, parsed body).
:class:`FakeGeminiProcess` runs the same server (default responder) in a child process, for
benchmarks; ``python tests/fake_gemini.py --latency 0.2`` prints ``PORT <n>`` and serves until
its stdin closes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

# the Gemini API path, and the Vertex AI one (/v1beta1/projects/{p}/locations/{l}/publishers/google/models/{m})
_PATH_RE = re.compile(r"^/(?P<version>v1[^/]*)/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/publishers/google/)?"
                      r"models/(?P<model>[^/:]+):generateContent$")


@dataclass
class Reply:
    """One scripted answer. Use the constructors below."""

    status: int = 200
    body: Any = None  # dict -> JSON; str -> sent as is
    delay: float = 0.0  # extra seconds before answering (on top of the server latency)
    kind: str = "ok"
    headers: dict = field(default_factory=dict)  # extra response headers (Retry-After...)

    # ---- successful answers ------------------------------------------------------------------
    @staticmethod
    def text(text: str, finish: str = "STOP", in_tokens: int | None = None, out_tokens: int | None = None) -> "Reply":
        """A candidate whose text is ``text`` (JSON or not)."""
        body = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish, "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": 100 if in_tokens is None else in_tokens,
                "candidatesTokenCount": max(1, len(text) // 4) if out_tokens is None else out_tokens,
            },
            "modelVersion": "fake-gemini",
        }
        body["usageMetadata"]["totalTokenCount"] = sum(body["usageMetadata"].values())
        return Reply(200, body, kind="ok")

    @staticmethod
    def json(obj: Any, finish: str = "STOP") -> "Reply":
        return Reply.text(json.dumps(obj), finish=finish)

    @staticmethod
    def rationales(mapping: dict[str, list[str]]) -> "Reply":
        """The expected answer shape: ``{"rationales": [{"code", "quotes"}]}``."""
        return Reply.json({"rationales": [{"code": c, "quotes": q} for c, q in mapping.items()]})

    # ---- faults ------------------------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str = "injected fault", retry_after: str | None = None) -> "Reply":
        """An HTTP error; ``retry_after`` sets the ``Retry-After`` header (seconds or an HTTP date)."""
        names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
        return Reply(status, {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}},
                     kind=f"http_{status}", headers={"Retry-After": retry_after} if retry_after is not None else {})

    @staticmethod
    def timeout(seconds: float = 5.0) -> "Reply":
        """Sleep ``seconds`` before answering (set it above the client's time-out)."""
        r = Reply.json({"rationales": []})
        r.delay, r.kind = seconds, "timeout"
        return r

    @staticmethod
    def malformed(text: str = "Sure! Here are the rationales: {code: E11.9, quotes: [oops") -> "Reply":
        r = Reply.text(text)
        r.kind = "malformed"
        return r

    @staticmethod
    def truncated(obj: Any, keep: float = 0.7) -> "Reply":
        """The JSON of ``obj`` cut after ``keep`` of its characters, finishReason MAX_TOKENS."""
        s = json.dumps(obj)
        r = Reply.text(s[: max(1, int(len(s) * keep))], finish="MAX_TOKENS")
        r.kind = "truncated"
        return r

    @staticmethod
    def empty() -> "Reply":
        return Reply(200, {"candidates": [], "usageMetadata": {"promptTokenCount": 100, "totalTokenCount": 100}},
                     kind="empty")

    @staticmethod
    def blocked_prompt(reason: str = "SAFETY") -> "Reply":
        return Reply(200, {"promptFeedback": {"blockReason": reason},
                           "usageMetadata": {"promptTokenCount": 100, "totalTokenCount": 100}}, kind="blocked")

    @staticmethod
    def blocked_candidate(reason: str = "SAFETY") -> "Reply":
        body = {
            "candidates": [{"finishReason": reason, "index": 0,
                            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}],
            "usageMetadata": {"promptTokenCount": 100, "totalTokenCount": 100},
        }
        return Reply(200, body, kind="blocked")


def prompt_text(body: dict) -> str:
    """All text of a generateContent request (system instruction and contents)."""
    parts: list[str] = []
    for block in [body.get("systemInstruction") or {}] + list(body.get("contents") or []):
        if isinstance(block, dict):
            parts += [p.get("text", "") for p in block.get("parts") or [] if isinstance(p, dict)]
    return "\n".join(parts)


_CODES_RE = re.compile(r"<codes>(.*?)</codes>", re.S)
_NOTE_RE = re.compile(r"<note>\n?(.*?)</note>", re.S)


def quote_first_words(body: dict, n_words: int = 4) -> Reply:
    """Default responder: for every code listed in the prompt's ``<codes>`` block, quote the first
    ``n_words`` words of the note (verbatim). Works with the project's prompt files."""
    text = prompt_text(body)
    codes_block = _CODES_RE.findall(text)
    note = _NOTE_RE.findall(text)
    codes = re.findall(r"^- (\S+?):", codes_block[-1], re.M) if codes_block else []
    words = note[-1].split()[:n_words] if note else []
    quote = " ".join(words)
    return Reply.rationales({c: [quote] if quote else [] for c in codes})


class FakeGemini:
    """A threaded loopback HTTP server; use as a context manager or call start()/stop()."""

    path_re = _PATH_RE  # the request paths served (others get a 404)

    @staticmethod
    def prompt_of(body: dict) -> str:
        """The prompt text of a request body (what ``script`` matches)."""
        return prompt_text(body)

    def __init__(self, latency: float = 0.0, responder: Optional[Callable[[dict], Reply]] = None):
        self.latency = latency
        self.responder = responder or quote_first_words
        self.hits = 0
        self.requests: list[dict] = []
        self.served: list[str] = []  # kind of every reply sent, in order
        self._scripts: list[tuple[str, list[Reply]]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- scripting -------------------------------------------------------------------------
    def script(self, match: str, *replies: Reply) -> "FakeGemini":
        """Queue ``replies`` for the next requests whose prompt text contains ``match``."""
        with self._lock:
            self._scripts.append((match, list(replies)))
        return self

    def reset(self) -> None:
        with self._lock:
            self.hits, self.requests, self.served, self._scripts = 0, [], [], []

    def _next_reply(self, body: dict) -> Reply:
        text = self.prompt_of(body)
        with self._lock:
            for match, queue in self._scripts:
                if queue and match in text:
                    return queue.pop(0)
        return self.responder(body)

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "FakeGemini":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
            # client's delayed ACK hold the body back ~40 ms, a latency a real service does not add
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - counters, for a server in another process
                data = json.dumps({"hits": fake.hits, "served": fake.served}).encode()
                self.send_response(200 if self.path == "/_stats" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                m = fake.path_re.match(self.path.split("?")[0])
                with fake._lock:
                    fake.hits += 1
                    fake.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                if not m:
                    reply = Reply.error(404, f"unknown path {self.path}")
                else:
                    reply = fake._next_reply(body)
                with fake._lock:
                    fake.served.append(reply.kind)
                delay = fake.latency + reply.delay
                if delay:
                    time.sleep(delay)
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = payload.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-gemini", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeGemini":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class FakeGeminiProcess:
    """The same server with the default responder in a child process (so that its work does not
    compete with the client for the GIL, as for a real remote service). ``hits`` asks the server."""

    def __init__(self, latency: float = 0.0):
        self.latency = latency
        self._proc: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> "FakeGeminiProcess":
        self._proc = subprocess.Popen([sys.executable, __file__, "--latency", str(self.latency)],
                                      stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"fake Gemini server did not start (said {line!r})")
        self.base_url = f"http://127.0.0.1:{line[1]}/"
        return self

    @property
    def hits(self) -> int:
        with urllib.request.urlopen(self.base_url + "_stats", timeout=10) as r:  # loopback only
            return int(json.loads(r.read())["hits"])

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()  # the child exits when its stdin closes
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

    def __enter__(self) -> "FakeGeminiProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="fake Gemini generateContent server on 127.0.0.1")
    ap.add_argument("--latency", type=float, default=0.0)
    cli = ap.parse_args()
    srv = FakeGemini(latency=cli.latency).start()
    print("PORT", srv.base_url.rstrip("/").rsplit(":", 1)[1], flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    srv.stop()
