"""The ``quote`` command against RECORDED exchanges of real OpenAI-compatible servers.

tests/fixtures/recorded/<server>-<version>.json were written by tools/record_server_pairs.py: the
project's own client (``python -m rationale_kit quote``) asked a real server running on this
machine (llama-cpp-python's server, llama.cpp's llama-server, both with the bundled SmolLM2-135M
GGUF) through a logging proxy, which kept the request JSON and the answer's status, headers and
body bytes verbatim. Here a loopback HTTP server (stdlib ``http.server``) gives those bytes back
in the recorded order, ``quote`` is run with the recorded command line, and what it must do is
checked from the recorded answers themselves: the requests it sends, the quotes of every answer
aligned to the note, a rejected request format stopping at the first request with the setting to
change, answers cut at the budget reported as truncated, a prompt longer than the server's
context failing that note without retries.

(tests/test_llm_wire.py covers vLLM, Ollama and OpenAI with pairs written from their
documentation: those servers cannot run on this machine.)
"""
from __future__ import annotations

import http.server
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from rationale_kit.__main__ import main

RECORDED_DIR = Path(__file__).parent / "fixtures" / "recorded"
FILES = sorted(RECORDED_DIR.glob("*.json"))
FIXTURES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in FILES}
CASES = [(stem, sc["name"]) for stem, fx in FIXTURES.items() for sc in fx["scenarios"] if "quote_argv" in sc]
_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


class ReplayServer:
    """A loopback HTTP server answering each request with the next recorded exchange (same method
    and path, the one whose request JSON is this one's if there is one), its status, reason, headers
    and body bytes as recorded; an answer the client gave
    up on when it was recorded (``client_gone``) comes after the recorded delay (at most
    ``max_delay_s``). Requests beyond the recording get a 599 and are counted in ``misses``."""

    def __init__(self, exchanges: list[dict], max_delay_s: float = 3.0):
        self.queue = list(exchanges)
        self.received: list[dict] = []
        self.served: list[Optional[dict]] = []
        self.misses = 0
        self.max_delay_s = max_delay_s
        lock = threading.Lock()
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                got = {"method": self.command, "path": self.path, "json": json.loads(raw) if raw else None}
                with lock:
                    srv.received.append(got)
                    # the recorded exchange of this very request (the client may skip a request it
                    # made when recording, e.g. a re-ask), else the next one of the same route
                    same = [k for k, e in enumerate(srv.queue)
                            if (e["request"]["method"], e["request"]["path"]) == (self.command, self.path)]
                    i = next((k for k in same if srv.queue[k]["request"].get("json") == got["json"]),
                             same[0] if same else None)
                    ex = srv.queue.pop(i) if i is not None else None
                    srv.served.append(ex)
                if ex is None:
                    srv.misses += 1
                    body, status, reason, headers = b'{"error": "no recorded answer left"}', 599, "Replay Miss", []
                else:
                    r = ex["response"]
                    body = r["body"].encode("utf-8") if "body" in r else bytes.fromhex(r["body_hex"])
                    status, reason, headers = r["status"], r["reason"], r["headers"]
                    if ex.get("client_gone"):
                        time.sleep(min(ex["elapsed_s"], srv.max_delay_s))
                try:
                    self.send_response(status, reason)
                    for k, v in headers:
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up, as it did when this was recorded
                    pass

            do_GET = do_POST = _serve

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- what a recorded answer says, read here without the project's code -------------------------

def error_text(resp: dict) -> Optional[str]:
    """The error message of a non-200 answer (``error.message``, ``error`` or ``detail``, else the
    body); None for a 200."""
    if resp["status"] == 200:
        return None
    try:
        body = json.loads(resp.get("body", ""))
    except ValueError:
        return resp.get("body", "")
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)
    return str(body)


def completion(resp: dict) -> tuple[str, Optional[str], int, int]:
    """``(content, finish_reason, prompt_tokens, completion_tokens)`` of a 200 chat completion."""
    body = json.loads(resp["body"])
    c = body["choices"][0]
    u = body.get("usage") or {}
    return c["message"].get("content") or "", c.get("finish_reason"), u.get("prompt_tokens", 0), u.get("completion_tokens", 0)


def is_format_error(msg: Optional[str]) -> bool:
    return bool(msg) and any(s in msg for s in ("response_format", "json_schema", "'text' or 'json_object'"))


def is_context_error(msg: Optional[str]) -> bool:
    m = (msg or "").lower()
    return any(s in m for s in ("context window", "context size", "context length", "exceeds the available"))


def note_of(req: dict, docs: list[dict]) -> dict:
    user = req["json"]["messages"][-1]["content"]
    hits = [d for d in docs if d["text"].strip()[:200] in user]
    assert len(hits) == 1, "a recorded request names no single note of the scenario"
    return hits[0]


def answer_quotes(content: str) -> dict[str, list[str]]:
    """``code -> quotes`` of an answer that is the JSON the prompt asks for ({} when it is not)."""
    try:
        obj = json.loads(content)
    except ValueError:
        return {}
    out: dict[str, list[str]] = {}
    for r in (obj.get("rationales") if isinstance(obj, dict) else None) or []:
        if isinstance(r, dict) and isinstance(r.get("code"), str) and isinstance(r.get("quotes"), list):
            out.setdefault(r["code"], []).extend(q for q in r["quotes"] if isinstance(q, str))
    return out


def _bare(s: str) -> str:
    return " ".join(s.strip(" \"'.,;:\n\t").lower().split())


# --- the replay ---------------------------------------------------------------------------------

def replay(stem: str, name: str, tmp_path: Path, monkeypatch) -> tuple[dict, ReplayServer, int, str, list[dict]]:
    """Run ``quote`` with the recorded command line of scenario ``name`` against its recorded
    exchanges; the scenario, the server, the exit status, stderr and the spans written."""
    fx = FIXTURES[stem]
    sc = next(s for s in fx["scenarios"] if s["name"] == name)
    exchanges = [e for e in fx["exchanges"] if e["scenario"] == name]
    monkeypatch.chdir(tmp_path)
    for fname, rows in (("docs.jsonl", sc["docs"]), ("pairs.jsonl", sc["pairs"])):
        (tmp_path / fname).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if sc["profile_llm"]:
        (tmp_path / "profile.yaml").write_text("base: default\nrationales:\n  llm: " + json.dumps(sc["profile_llm"]) + "\n",
                                               encoding="utf-8")
    with ReplayServer(exchanges) as srv:
        argv = [a.replace("{base_url}", srv.url) for a in sc["quote_argv"]]
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["quote", *argv])
    out = tmp_path / "spans.jsonl"
    spans = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    return sc, srv, rc, err.getvalue(), spans


def test_fixtures_are_recorded_with_provenance():
    assert {"llama-cpp-python", "llama-server"} <= {fx["server"]["name"] for fx in FIXTURES.values()}
    for stem, fx in FIXTURES.items():
        s = fx["server"]
        assert fx["kind"] == "recorded" and stem == f"{s['name']}-{s['version']}"
        assert s["command"] and re.fullmatch(r"[0-9a-f]{64}", s["model_sha256"]) and fx["recorded_at"]
        assert fx["client"]["command"] == "python -m rationale_kit quote" and fx["client"]["rationale_kit_commit"]
        assert fx["exchanges"] and all(isinstance(e["response"]["status"], int) for e in fx["exchanges"])
        assert all(not e["request"].get("authorization_sent") for e in fx["exchanges"])  # nothing secret recorded
    doc = json.loads((Path(__file__).parent / "fixtures" / "openai_wire.json").read_text())
    assert doc["kind"] == "documentation-derived" and "documentation" in doc["_about"]


@pytest.mark.parametrize("stem,name", CASES, ids=[f"{s}:{n}" for s, n in CASES])
def test_quote_against_recorded_server(stem, name, tmp_path, monkeypatch):
    fx = FIXTURES[stem]
    sc, srv, rc, err, spans = replay(stem, name, tmp_path, monkeypatch)
    recorded = [e for e in fx["exchanges"] if e["scenario"] == name]
    assert srv.misses == 0 and len(srv.received) <= len(recorded), "quote sent requests that were not recorded"
    # the requests it sends now are the recorded ones (every field but the prompt text, which the
    # prompt files determine; the note is in it)
    for got, want in zip(srv.received, srv.served):
        assert (got["method"], got["path"]) == (want["request"]["method"], want["request"]["path"])
        g, w = dict(got["json"]), dict(want["request"]["json"])
        assert [m["role"] for m in g.pop("messages")] == [m["role"] for m in w.pop("messages")]
        assert g == w
    first = srv.served[0]["response"]
    msg = error_text(first)
    if is_format_error(msg):
        # a request format the server rejects: one request, exit 2, one line naming the setting
        assert rc == 2 and len(srv.received) == 1, (rc, len(srv.received))
        line = err.strip()
        assert "\n" not in line and "response_format" in line and "--response-format json_object" in line, line
        assert not spans
        return
    assert rc == 0, err
    by_note: dict[str, list[dict]] = {}
    for s in spans:
        by_note.setdefault(s["note_id"], []).append(s)
    asked = {}
    for p in sc["pairs"]:
        asked.setdefault(p["note_id"], []).append(p["code"])
    # every pair asked has a line in the output
    assert {(s["note_id"], s["code"]) for s in spans} == {(p["note_id"], p["code"]) for p in sc["pairs"]}
    used = srv.served
    for ex in used:
        note = note_of(ex["request"], sc["docs"])
        lines = by_note[note["note_id"]]
        resp = ex["response"]
        if ex.get("client_gone"):
            assert {s["status"] for s in lines} == {"failed"}
            assert "time-out" in err and "--timeout" in err
            continue
        if resp["status"] != 200:
            assert {s["status"] for s in lines} == {"failed"}, lines
            if is_context_error(error_text(resp)):  # cannot succeed: asked once, the fix named
                assert sum(note_of(e["request"], sc["docs"]) is note for e in used) == 1
                assert "max_note_chars" in err, err
            continue
        content, finish, _, _ = completion(resp)
        quotes = answer_quotes(content)
        # the codes the answer reached (a cut answer is not JSON, the code may still be written out)
        reached = [c for c in asked[note["note_id"]]
                   if c in quotes or re.search(r'"code"\s*:\s*"' + re.escape(c) + '"', content)]
        if finish == "length" and len(reached) < len(asked[note["note_id"]]):
            # cut at the budget before reaching every code: the codes not reached say so
            assert any(s["status"] == "truncated" for s in lines), lines
            if not reached:  # nothing readable: not re-asked (the same budget cuts the re-ask too)
                assert {s["status"] for s in lines} == {"truncated"}
                assert sum(note_of(e["request"], sc["docs"]) is note for e in used) == 1
        for code, qs in quotes.items():
            if code not in asked[note["note_id"]]:
                continue
            mine = [s for s in lines if s["code"] == code]
            for q in qs:
                if re.search(r"[A-Za-z]", q) and q.strip() and q.strip() in note["text"]:
                    # a verbatim quote is aligned where it stands in the note
                    hit = [s for s in mine if s["status"] == "aligned"
                           and _bare(note["text"][s["start"]:s["end"]]) == _bare(q)]
                    assert hit, (code, q, mine)
        for s in lines:
            if s["status"] == "aligned":
                assert 0 <= s["start"] < s["end"] <= len(note["text"]) and s["quote"]
