"""Record real request/response pairs between this project's OpenAI-compatible client and a real
server (llama.cpp's llama-server, llama-cpp-python, vLLM, Ollama, OpenAI...), for the replay tests
(tests/test_llm_recorded.py).

A small logging reverse proxy on 127.0.0.1 stands between the client and the server: every
request is forwarded unchanged (less ``Accept-Encoding``, so the answer comes uncompressed) and
kept with the answer's status, reason, headers and body bytes verbatim, and the seconds it took.
Then the ``quote`` command (``python -m rationale_kit quote``, the project's own client, run in this
process) is run through the proxy once per scenario, each with a fresh cache so every request
really goes to the server:

* ``json_schema``: the default request (``response_format`` json_schema);
* ``json_object``, ``none``: the other answer formats (``none``: plain text, the prompt alone);
* ``max_completion_tokens``: the answer budget in OpenAI's newer field;
* ``short_budget``: a budget of 24 tokens (answers cut at the limit);
* ``context_overflow``: one note longer than any small server context (notes are not cut);
* ``timeout``: a 1 s client time-out, no retries (the answer that comes too late is kept too);
* ``models``: ``GET {base_url}/models``.

Scenarios after ``json_schema`` use the first answer format the server accepted (json_schema,
else json_object, else none). The notes: ``--docs``/``--pairs`` (quote's JSONL formats), by default
three short English clinical cases of CodiEsp (dev set, machine translation; CC BY 4.0) read from
``$RK_CODIESP_DIR`` or /work/shared/data/codiesp_v4.

The output file (``tests/fixtures/recorded/<server>-<version>.json``) holds the provenance (server
name and version, the command line that started it, the model file's sha256, date, this
project's commit, the client settings), the notes and pairs asked, every scenario's ``quote``
command line, exit status and stderr, and every recorded exchange. An ``Authorization`` header is
never written (only whether one was sent).

Usage (the server already running)::

    python tools/record_server_pairs.py --base-url http://127.0.0.1:8080/v1 \\
        --server-name llama-server --server-version b0-0c1e57098 \\
        --server-command "llama-server -m model.gguf --port 8080 -c 4096" --model-file model.gguf \\
        --model SmolLM2-135M-Instruct [--scenarios json_schema,json_object] [--out PATH]

For OpenAI or another remote service set ``OPENAI_API_KEY`` (sent, never recorded), leave
``--local-endpoint`` off and pass ``--public-data`` only for notes that are not credentialed data
(the default CodiEsp notes are public). ``proxy`` mode only forwards and records, for a client of
one's own: ``python tools/record_server_pairs.py proxy --base-url URL --out pairs.json`` prints the
URL to use and writes the pairs on Ctrl-C.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import http.server
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("models", "json_schema", "json_object", "none", "short_budget", "context_overflow", "timeout",
             "max_completion_tokens")
#: three short CodiEsp dev cases (English machine translation) and their gold diagnosis codes
DEFAULT_NOTES = ("S0004-06142007000600011-1", "S1130-05582008000400008-3", "S0365-66912006001100006-4")
#: request headers not forwarded: hop-by-hop ones, and Accept-Encoding (answers are kept uncompressed)
_DROP_REQ = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
             "upgrade", "accept-encoding", "content-length"}
_DROP_RESP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class RecordingProxy:
    """A threaded HTTP reverse proxy on 127.0.0.1 (a free port) to ``upstream`` (``http://host:port``)
    that keeps every exchange in ``pairs`` (a list of dicts, in the order the answers came back).
    A context manager; ``url(path)`` is the proxy's address of a path."""

    def __init__(self, upstream: str, timeout_s: float = 3600.0):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.timeout_s = timeout_s
        self.pairs: list[dict] = []
        self.scenario = ""
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                proxy._exchange(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _exchange(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _DROP_REQ}
        conn_cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=self.timeout_s)
        t0 = time.monotonic()
        scenario = self.scenario
        rec: dict[str, Any] = {"scenario": scenario, "request": request_record(handler.command, handler.path,
                                                                                headers, body)}
        try:
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, rheaders = resp.status, resp.reason, resp.getheaders()
        except OSError as exc:  # the server is gone: say so to the client, keep the fact
            status, reason, rheaders, data = 502, "Bad Gateway", [("Content-Type", "text/plain")], \
                f"proxy: {type(exc).__name__}: {exc}".encode()
            rec["upstream_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        rec["elapsed_s"] = round(time.monotonic() - t0, 3)
        rec["response"] = response_record(status, reason, rheaders, data)
        try:
            handler.send_response(status, reason)
            for k, v in rheaders:
                if k.lower() not in _DROP_RESP:
                    handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
            rec["client_gone"] = False
        except OSError:  # the client gave up first (its time-out): the answer came too late
            rec["client_gone"] = True
        with self._lock:
            self.pairs.append(rec)


def request_record(method: str, path: str, headers: dict, body: bytes) -> dict:
    """A request as recorded: method, path, the headers that matter (never an Authorization value)
    and the body, parsed when it is JSON (else as text)."""
    keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "user-agent", "accept")}
    out: dict[str, Any] = {"method": method, "path": path, "headers": keep,
                           "authorization_sent": any(k.lower() == "authorization" for k in headers)}
    if body:
        try:
            out["json"] = json.loads(body)
        except ValueError:
            out["body"] = body.decode("utf-8", "replace")
    return out


def response_record(status: int, reason: str, headers: list, data: bytes) -> dict:
    """An answer as recorded: status, reason, every header in order and the body bytes verbatim
    (``body`` when they are UTF-8 text, else ``body_hex``)."""
    out: dict[str, Any] = {"status": status, "reason": reason, "headers": [[k, v] for k, v in headers]}
    try:
        out["body"] = data.decode("utf-8")
    except UnicodeDecodeError:
        out["body_hex"] = data.hex()
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def codiesp_notes(ids=DEFAULT_NOTES) -> tuple[list[dict], list[dict]]:
    """``(docs, pairs)`` of CodiEsp dev cases ``ids``: the English text and the gold diagnosis codes
    (upper case), in quote's JSONL record formats."""
    root = Path(os.environ.get("RK_CODIESP_DIR") or "/work/shared/data/codiesp_v4") / "dev"
    codes: dict[str, list[str]] = {}
    for line in (root / "devD.tsv").read_text(encoding="utf-8").splitlines():
        doc, _, code = line.partition("\t")
        if doc in ids:
            codes.setdefault(doc, []).append(code.strip().upper())
    docs = [{"note_id": i, "text": (root / "text_files_en" / f"{i}.txt").read_text(encoding="utf-8")} for i in ids]
    pairs = [{"note_id": i, "code": c} for i in ids for c in codes[i]]
    return docs, pairs


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run_quote(proxy: RecordingProxy, base_path: str, args: argparse.Namespace, name: str, docs: list[dict],
              pairs: list[dict], extra: list[str], profile_llm: Optional[dict] = None) -> dict:
    """Run ``quote`` through the proxy as scenario ``name``; its command line, exit status, stderr
    and output spans."""
    with tempfile.TemporaryDirectory(prefix=f"rec_{name}_") as tmp:
        tmp_p = Path(tmp)
        _write_jsonl(tmp_p / "docs.jsonl", docs)
        _write_jsonl(tmp_p / "pairs.jsonl", pairs)
        profile = "default"
        if profile_llm:  # a small profile of the default one (quote has no flag for these keys)
            profile = str(tmp_p / "profile.yaml")
            Path(profile).write_text("base: default\nrationales:\n  llm: " + json.dumps(profile_llm) + "\n",
                                     encoding="utf-8")
        argv = ["--docs", "docs.jsonl", "--pairs", "pairs.jsonl", "--out", "spans.jsonl", "--profile",
                "profile.yaml" if profile_llm else profile, "--backend", "openai", "--model", args.model,
                "--base-url", proxy.url(base_path), "--cache-dir", "cache", "--concurrency", "1",
                "--timeout", str(args.timeout), "--max-output-tokens", str(args.max_output_tokens), *extra]
        if args.local_endpoint:
            argv.append("--local-endpoint")
        if args.public_data:
            argv.append("--public-data")
        proxy.scenario = name
        t0 = time.monotonic()
        rc, err = quote_in_process(argv, tmp)
        out = tmp_p / "spans.jsonl"
        spans = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] if out.exists() else None
    shown = [a if not a.startswith(proxy.url()) else "{base_url}" + a[len(proxy.url()):] for a in argv]
    return {"name": name, "quote_argv": shown, "profile_llm": profile_llm, "docs": docs, "pairs": pairs,
            "exit_code": rc,
            "stderr": err.splitlines()[-20:], "spans": spans, "wall_s": round(time.monotonic() - t0, 2)}


def quote_in_process(argv: list[str], cwd: str) -> tuple[int, str]:
    """``python -m rationale_kit quote *argv`` run in this process from folder ``cwd`` (one import of
    the package and its ICD tables for every scenario): exit status and stderr."""
    import contextlib
    import io

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from rationale_kit.__main__ import main as rk_main

    err, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err):
            try:
                rc = rk_main(["quote", *argv])
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
    return rc, err.getvalue()


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def record(args: argparse.Namespace) -> int:
    base = urllib.parse.urlsplit(args.base_url)
    upstream = f"{base.scheme}://{base.netloc}"
    base_path = base.path.rstrip("/")
    if args.docs:
        from rationale_kit.core.records import iter_jsonl_objects
        docs = [rec for _, rec in iter_jsonl_objects(args.docs)]
        pairs = [rec for _, rec in iter_jsonl_objects(args.pairs)]
        notes_source = f"{args.docs} / {args.pairs}"
    else:
        docs, pairs = codiesp_notes(DEFAULT_NOTES[: args.n_notes])
        notes_source = ("CodiEsp v4 dev set, English machine translation (text_files_en) and gold diagnosis codes "
                        "(devD.tsv), CC BY 4.0, Miranda-Escalada et al. 2020, doi:10.5281/zenodo.3693570")
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        print(f"error: unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    scenarios: list[dict] = []
    fmt = "json_schema"
    model_sha = sha256_file(args.model_file) if args.model_file else None

    def save(exchanges: list[dict]) -> Path:
        """Write the file (after every scenario: a stopped recording keeps what is done)."""
        doc = {
            "_about": ("Request/response pairs RECORDED between rationale_kit's OpenAI-compatible client (the quote "
                       "command) and a real server, by tools/record_server_pairs.py (a logging reverse proxy): the "
                       "request JSON as the client sent it and the answer's status, headers and body bytes verbatim. "
                       "Replayed by tests/test_llm_recorded.py."),
            "kind": "recorded",
            "server": {"name": args.server_name, "version": args.server_version, "command": args.server_command,
                       "build": args.server_build,
                       "base_url": args.base_url, "model_file": Path(args.model_file).name if args.model_file else None,
                       "model_sha256": model_sha,
                       "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s)"},
            "recorded_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "recorder": "tools/record_server_pairs.py " + " ".join(sys.argv[1:]),
            "client": {"rationale_kit_commit": git_commit(), "command": "python -m rationale_kit quote",
                       "model": args.model, "timeout_s": args.timeout, "max_output_tokens": args.max_output_tokens,
                       "concurrency": 1, "local_endpoint": args.local_endpoint, "profile": "default"},
            "notes_source": notes_source,
            "scenarios": scenarios,
            "exchanges": exchanges,
        }
        out = Path(args.out) if args.out else (ROOT / "tests" / "fixtures" / "recorded"
                                               / f"{args.server_name}-{args.server_version}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(out)
        return out

    with RecordingProxy(upstream) as proxy:
        for name in [s for s in SCENARIOS if s in wanted]:
            print(f"scenario {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            if name == "models":
                proxy.scenario = name
                conn = http.client.HTTPConnection("127.0.0.1", int(proxy.url().rsplit(":", 1)[1]), timeout=60)
                conn.request("GET", f"{base_path}/models")
                conn.getresponse().read()
                conn.close()
                scenarios.append({"name": name, "request": "GET {base_url}/models",
                                  "wall_s": round(time.monotonic() - t0, 2)})
                continue
            if name == "json_schema":
                sc = run_quote(proxy, base_path, args, name, docs, pairs, [])
                if sc["exit_code"] == 2 and "response_format" in " ".join(sc["stderr"]):
                    fmt = "json_object"
            elif name in ("json_object", "none"):
                sc = run_quote(proxy, base_path, args, name, docs, pairs, ["--response-format", name])
                if name == "json_object" and fmt != "json_schema" and sc["exit_code"] == 2:
                    fmt = "none"
            elif name == "max_completion_tokens":
                sc = run_quote(proxy, base_path, args, name, docs[:1], [p for p in pairs if p["note_id"] == docs[0]["note_id"]],
                               ["--response-format", fmt, "--output-token-param", "max_completion_tokens"])
            elif name == "short_budget":
                sc = run_quote(proxy, base_path, args, name, docs[:1], [p for p in pairs if p["note_id"] == docs[0]["note_id"]],
                               ["--response-format", fmt, "--max-output-tokens", "24"])
            elif name == "context_overflow":
                long_text = "\n".join(d["text"] for d in docs) * args.overflow_repeat
                sc = run_quote(proxy, base_path, args, name, [{"note_id": "long", "text": long_text}],
                               [{"note_id": "long", "code": p["code"]} for p in pairs[:2]],
                               ["--response-format", fmt], profile_llm={"max_note_chars": None, "max_retries": 1})
            elif name == "timeout":
                sc = run_quote(proxy, base_path, args, name, docs[:1], [p for p in pairs if p["note_id"] == docs[0]["note_id"]],
                               ["--response-format", fmt, "--timeout", "1", "--max-output-tokens", "256"],
                               profile_llm={"max_retries": 0})
                time.sleep(args.settle_s)  # let the late answer reach the proxy
            sc["response_format_used"] = fmt if name not in ("json_schema", "json_object", "none") else name
            scenarios.append(sc)
            save(list(proxy.pairs))
            print(f"  exit {sc['exit_code']} in {sc['wall_s']} s; "
                  f"{sum(p['scenario'] == name for p in proxy.pairs)} exchange(s)", file=sys.stderr, flush=True)
        time.sleep(0.2)
        exchanges = list(proxy.pairs)
    out = save(exchanges)
    print(f"wrote {len(exchanges)} exchange(s) of {len(scenarios)} scenario(s) to {out}", file=sys.stderr)
    return 0


def proxy_only(args: argparse.Namespace) -> int:
    base = urllib.parse.urlsplit(args.base_url)
    with RecordingProxy(f"{base.scheme}://{base.netloc}") as proxy:
        print(f"recording; point the client at {proxy.url(base.path.rstrip('/'))} (Ctrl-C to stop)", file=sys.stderr)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        exchanges = list(proxy.pairs)
    Path(args.out).write_text(json.dumps({"kind": "recorded", "base_url": args.base_url, "exchanges": exchanges},
                                         indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(exchanges)} exchange(s) to {args.out}", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proxy"]:
        ap = argparse.ArgumentParser(prog="record_server_pairs.py proxy")
        ap.add_argument("--base-url", required=True)
        ap.add_argument("--out", required=True)
        return proxy_only(ap.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the server's API root, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--server-name", required=True, help="e.g. llama-server, llama-cpp-python, vllm, ollama, openai")
    ap.add_argument("--server-version", required=True)
    ap.add_argument("--server-command", default=None, help="the command line that started the server")
    ap.add_argument("--server-build", default=None, help="how the server was built or installed (free text)")
    ap.add_argument("--model", required=True, help="the model name sent in requests")
    ap.add_argument("--model-file", help="the served weights (for their sha256)")
    ap.add_argument("--docs", help="notes JSONL {note_id, text} (default: three CodiEsp dev cases)")
    ap.add_argument("--pairs", help="pairs JSONL {note_id, code}")
    ap.add_argument("--n-notes", type=int, default=len(DEFAULT_NOTES),
                    help=f"how many of the {len(DEFAULT_NOTES)} default CodiEsp notes to ask (slow servers: fewer)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--timeout", type=float, default=600.0, help="client time-out per request (s)")
    ap.add_argument("--max-output-tokens", type=int, default=256)
    ap.add_argument("--overflow-repeat", type=int, default=8, help="copies of the notes in the context_overflow note")
    ap.add_argument("--settle-s", type=float, default=30.0, help="wait after the timeout scenario for its late answer")
    ap.add_argument("--local-endpoint", action="store_true", help="the server runs here (quote --local-endpoint)")
    ap.add_argument("--public-data", action="store_true", help="the notes are not credentialed data")
    ap.add_argument("--out", help="output JSON (default tests/fixtures/recorded/<server>-<version>.json)")
    args = ap.parse_args(argv)
    if bool(args.docs) != bool(args.pairs):
        ap.error("--docs and --pairs go together")
    return record(args)


if __name__ == "__main__":
    sys.exit(main())
