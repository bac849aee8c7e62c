"""``python -m rationale_kit quote``: LLM rationales for one's own notes, outside the notebooks.

``quote --docs notes.jsonl --pairs pairs.jsonl --out spans.jsonl [--profile P] [--backend B
--model M --base-url URL] [--shots K --examples spans.jsonl [--examples-docs notes.jsonl]]
[--cache-dir DIR] [--public-data]``

* ``--docs``: one ``{"note_id", "text"}`` per line; ``--pairs``: one ``{"note_id", "code"}`` per
  line, the codes to explain (in file order per note).
* The backend and every LLM setting come from the profile's ``rationales.llm`` section
  (default profile: the bundled local model); ``--backend/--model/--base-url`` override it and are
  validated like the profile. ``--shots K`` adds up to K human-annotated examples per code taken
  from ``--examples`` (spans JSONL ``note_id, code, start, end`` of the notes in
  ``--examples-docs``, default ``--docs``); a note being explained is never its own example.
* Answers go through the same cache as the notebooks (``--cache-dir``, default: one cache per user,
  ``$RK_LLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/rationale_kit/llm_cache``, else
  ``~/.cache/rationale_kit/llm_cache``), keyed on backend, model, prompt and every setting that
  determines the answer: a rerun, also one writing another ``--out``, makes no new calls, and a
  killed or interrupted run (exit 130) resumes where it stopped.
* The settings a real server needs can be given here too: ``--concurrency``, ``--timeout``,
  ``--max-output-tokens``, ``--response-format``, ``--output-token-param``, ``--local-endpoint``
  (they override the profile's ``rationales.llm`` keys of the same names). A server that rejects
  the request format (e.g. ``response_format`` json_schema) stops the command with exit status 2
  and the setting to change; nothing is retried.
* ``--out`` and the cache folder are checked (writable, not a folder) before the first call.
* The quotes are aligned to the notes (:mod:`rationale_kit.rationales.alignment`, the profile's threshold
  and occurrences) and written as JSONL, one line per span ``{note_id, code, start, end, quote,
  score, status}``: ``status`` is ``aligned``; or, with ``start``/``end`` null, ``unaligned`` (a
  quote not found in the note), ``no_quotes`` (the model quoted nothing for the code), or the
  request's outcome (``truncated``, ``failed``, ``blocked``, ``empty``). A summary goes to stderr.
* Credentialed data: the notes count as credentialed when the profile says so (``data.credentialed``
  or ``common.dataset: mimic``); otherwise their status is unknown, and a remote backend is refused
  (exit 2) unless ``--public-data`` says they are not credentialed data or the profile sets
  ``rationales.llm.allow_remote_credentialed_data``.

Bad input (unreadable file, bytes that are not UTF-8, malformed JSON, a missing key, an unknown
note, a duplicate note id, an output folder that does not exist) exits with status 2 and a message
on stderr naming the file and line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from rationale_kit.core.records import DataError, iter_jsonl_objects

SPAN_KEYS = ("note_id", "code", "start", "end", "quote", "score", "status")


def _jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line, object)`` of a JSONL file; every problem is a DataError naming file and line."""
    return list(iter_jsonl_objects(path))


def _string(path: str | Path, lineno: int, rec: dict, key: str, allow_number: bool = False) -> str:
    if key not in rec or rec[key] is None:
        raise DataError(f"{path}:{lineno}: missing key {key!r}")
    v = rec[key]
    if allow_number and isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise DataError(f"{path}:{lineno}: {key!r} must be a string, got {type(v).__name__}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path}:{lineno}: {key!r} holds a lone surrogate (\\ud800-\\udfff), not text") from None
    return v


def read_docs(path: str | Path) -> pd.DataFrame:
    """``note_id, text`` per line; duplicate ids and empty texts are errors."""
    rows, seen = [], {}
    for lineno, rec in _jsonl(path):
        nid = _string(path, lineno, rec, "note_id", allow_number=True)
        text = _string(path, lineno, rec, "text")
        if nid in seen:
            raise DataError(f"{path}:{lineno}: duplicate note_id {nid!r} (first on line {seen[nid]})")
        if not text.strip():
            raise DataError(f"{path}:{lineno}: note {nid!r} has an empty text")
        seen[nid] = lineno
        rows.append({"note_id": nid, "text": text})
    if not rows:
        raise DataError(f"{path}: no documents")
    return pd.DataFrame(rows, columns=["note_id", "text"])


def read_pairs(path: str | Path, docs: pd.DataFrame) -> pd.DataFrame:
    """``note_id, code`` per line, for notes of ``docs``; a repeated pair is kept once."""
    known = set(docs.note_id)
    rows, seen = [], set()
    for lineno, rec in _jsonl(path):
        nid = _string(path, lineno, rec, "note_id", allow_number=True)
        code = _string(path, lineno, rec, "code").strip()
        if nid not in known:
            raise DataError(f"{path}:{lineno}: unknown note_id {nid!r} (not in the documents)")
        if not code:
            raise DataError(f"{path}:{lineno}: empty code")
        if (nid, code) not in seen:
            seen.add((nid, code))
            rows.append({"note_id": nid, "code": code})
    if not rows:
        raise DataError(f"{path}: no (note_id, code) pairs")
    return pd.DataFrame(rows, columns=["note_id", "code"])


def _examples(path: str, docs: pd.DataFrame, codes: Sequence[str], shots: int, exclude: set, seed: int,
              descriptions: dict, window: int) -> list:
    from rationale_kit.rationales import llm
    from rationale_kit.core.records import read_spans_jsonl

    try:
        spans = read_spans_jsonl(path, docs)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason})") from None
    annotated = set(spans.note_id)
    dropped = annotated & exclude
    if dropped:  # a note being explained is never its own (or another's) example
        print(f"note: {len(dropped)} annotated note(s) of {path} are also being explained; not used as examples",
              file=sys.stderr)
    pool = docs[docs.note_id.isin(annotated - exclude)]
    return llm.select_examples(pool, spans[spans.note_id.isin(pool.note_id)], list(codes), shots, seed=seed,
                               exclude=exclude, descriptions=descriptions, window=window)


def quote_spans(docs: pd.DataFrame, answers: pd.DataFrame, threshold: float, occurrences: str) -> pd.DataFrame:
    """Aligned spans (:data:`SPAN_KEYS`) of a run's ``answers`` (:func:`llm.run_llm`)."""
    from rationale_kit.rationales.alignment import align_quotes

    ok = answers[answers.status == "ok"]
    rows = []
    if len(ok):
        aligned = align_quotes(docs, ok[["note_id", "code", "quote"]].reset_index(drop=True), threshold=threshold,
                               occurrences=occurrences)
        for r in aligned.itertuples(index=False):
            hit = not pd.isna(r.start)
            rows.append({"note_id": r.note_id, "code": r.code, "start": int(r.start) if hit else None,
                         "end": int(r.end) if hit else None, "quote": r.quote, "score": round(float(r.score), 4),
                         "status": "aligned" if hit else "unaligned"})
    for r in answers[answers.status != "ok"].itertuples(index=False):
        rows.append({"note_id": r.note_id, "code": r.code, "start": None, "end": None, "quote": None,
                     "score": None, "status": r.status})
    order = {(n, c): i for i, (n, c) in enumerate(dict.fromkeys(zip(answers.note_id, answers.code)))}
    rows.sort(key=lambda x: (order[(x["note_id"], x["code"])], x["start"] if x["start"] is not None else -1))
    return pd.DataFrame(rows, columns=list(SPAN_KEYS), dtype=object)  # object: offsets stay int or None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rationale_kit quote",
                                 description="Ask an LLM for quotes supporting codes of your notes and align them to spans.")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text} per line")
    ap.add_argument("--pairs", required=True, help="JSONL, one {note_id, code} per line: the codes to explain")
    ap.add_argument("--out", required=True, help="output spans JSONL")
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml or a path (default: default)")
    ap.add_argument("--backend", choices=["local", "gemini", "openai", "replay"], help="overrides rationales.llm.backend")
    ap.add_argument("--model", help="overrides rationales.llm.model")
    ap.add_argument("--base-url", help="overrides rationales.llm.base_url")
    ap.add_argument("--shots", type=int, default=0, help="human-annotated examples per code (needs --examples)")
    ap.add_argument("--examples", help="spans JSONL {note_id, code, start, end} of annotated notes (few-shot pool)")
    ap.add_argument("--examples-docs", help="JSONL {note_id, text} of the annotated notes (default: --docs)")
    ap.add_argument("--cache-dir", help="answer cache folder (default: the user's cache, see RK_LLM_CACHE_DIR)")
    ap.add_argument("--concurrency", type=int, help="requests in flight (rationales.llm.concurrency; 1 for a "
                    "server with one slot)")
    ap.add_argument("--timeout", type=float, help="seconds per request (rationales.llm.timeout_s)")
    ap.add_argument("--max-output-tokens", type=int, help="answer budget in tokens (rationales.llm.max_output_tokens)")
    ap.add_argument("--response-format", choices=["json_schema", "json_object", "none"],
                    help="how the answer format is asked for (rationales.llm.response_format)")
    ap.add_argument("--output-token-param", choices=["max_tokens", "max_completion_tokens"],
                    help="request field of the answer budget (rationales.llm.output_token_param)")
    ap.add_argument("--local-endpoint", action="store_true",
                    help="the openai server runs on this machine or your own network (rationales.llm.local_endpoint)")
    ap.add_argument("--public-data", action="store_true",
                    help="the notes are not credentialed data (otherwise a remote backend is refused unless the profile allows it)")
    args = ap.parse_args(argv)
    from rationale_kit.core import icd
    from rationale_kit.rationales import llm
    from rationale_kit.core.config import ConfigError, load_profile

    def fail(msg: str) -> int:
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)  # one line
        return 2

    out = Path(args.out)
    if not out.parent.is_dir():
        return fail(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        return fail(f"--out {out} is a folder; give the path of the spans JSONL file to write")
    if args.shots < 0:
        return fail(f"--shots must be 0 or more, got {args.shots}")
    if args.shots and not args.examples:
        return fail("--shots needs --examples (spans JSONL of annotated notes)")
    for flag, v, lo in (("--concurrency", args.concurrency, 1), ("--max-output-tokens", args.max_output_tokens, 1)):
        if v is not None and v < lo:
            return fail(f"{flag} must be at least {lo}, got {v}")
    if args.timeout is not None and not args.timeout > 0:
        return fail(f"--timeout must be a positive number of seconds, got {args.timeout}")
    llm_over = {k: v for k, v in (("backend", args.backend), ("model", args.model), ("base_url", args.base_url),
                                  ("concurrency", args.concurrency), ("timeout_s", args.timeout),
                                  ("max_output_tokens", args.max_output_tokens),
                                  ("response_format", args.response_format),
                                  ("output_token_param", args.output_token_param),
                                  ("local_endpoint", True if args.local_endpoint else None)) if v is not None}
    try:
        prof = load_profile(args.profile, {"rationales": {"llm": llm_over}} if llm_over else None)
        docs = read_docs(args.docs)
        pairs = read_pairs(args.pairs, docs)
        codes_by_note = pairs.groupby("note_id", sort=False)["code"].apply(list)
        asked = docs[docs.note_id.isin(codes_by_note.index)].assign(codes=lambda d: d.note_id.map(codes_by_note))
        descriptions = {c: icd.describe(c) for c in pairs.code.unique()}
        examples = []
        if args.shots:
            pool = read_docs(args.examples_docs) if args.examples_docs else docs
            examples = _examples(args.examples, pool, sorted(descriptions), args.shots, set(asked.note_id),
                                 prof.common.seed, descriptions, prof.rationales.llm.example_context_chars)
        cfg = prof.rationales.llm
        credentialed = True if llm.is_credentialed(prof) else (False if args.public_data else None)
        backend = llm.make_backend(cfg, credentialed=credentialed)
        llm.credential_guard(backend, credentialed, cfg.allow_remote_credentialed_data)
        reqs = llm.make_requests(asked, descriptions, examples, version=cfg.prompt_version, max_note_chars=cfg.max_note_chars)
    except (DataError, ConfigError, llm.LLMConfigError) as exc:
        return fail(str(exc))
    except llm.CredentialedDataError as exc:
        return fail(f"{exc} For notes that are not credentialed data, pass --public-data.")
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    tmp = out.with_name(out.name + ".tmp")
    problem = _check_writable(out, tmp, cache_dir)  # before paying for any call
    if problem:
        return fail(problem)
    try:
        answers, calls = llm.run_llm(
            reqs, backend, cache_dir=cache_dir, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
            credentialed=credentialed, allow_remote_credentialed_data=cfg.allow_remote_credentialed_data,
            progress=sys.stderr.isatty(), backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
            requests_per_minute=cfg.requests_per_minute, record=cfg.record_file,
            max_answer_chars=cfg.max_answer_chars, max_quotes_per_code=cfg.max_quotes_per_code)
    except llm.UnsupportedRequestError as exc:
        return fail(f"{exc} (answers already given are kept in {cache_dir})")
    except (llm.LLMConfigError, llm.ReplayMissError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print(f"interrupted; the answers so far are kept in {cache_dir} (a rerun asks only the rest)", file=sys.stderr)
        return 130
    spans = quote_spans(docs, answers, prof.alignment.threshold, prof.alignment.occurrences)
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in spans.to_dict("records"):
            fh.write(json.dumps({k: rec[k] for k in SPAN_KEYS}, ensure_ascii=False) + "\n")
    tmp.replace(out)  # written whole or not at all
    s = llm.calls_summary(calls, cfg.price_per_million_in, cfg.price_per_million_out)
    counts = spans.status.value_counts().to_dict()
    print(f"{len(pairs)} pairs of {len(asked)} notes; {s['new']} new calls, {s['cached']} cached; "
          f"spans by status: {json.dumps(counts)}; wrote {out}", file=sys.stderr)
    failed = calls[calls.outcome == "failed"]
    if len(failed):  # say why, not only how many
        reasons = failed.error.fillna("?").map(lambda e: " ".join(str(e).split())[:200]).value_counts()
        for why, n in reasons.head(3).items():
            print(f"failed ({n} request(s)): {why}", file=sys.stderr)
    return 0


def default_cache_dir() -> Path:
    """The answer cache shared by every ``quote`` run of this user: ``$RK_LLM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/rationale_kit/llm_cache``, else ``~/.cache/rationale_kit/llm_cache``."""
    import os

    if os.environ.get("RK_LLM_CACHE_DIR"):
        return Path(os.environ["RK_LLM_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "rationale_kit" / "llm_cache"


def _check_writable(out: Path, tmp: Path, cache_dir: Path) -> Optional[str]:
    """Why ``out`` (through ``tmp``) or ``cache_dir`` cannot be written, or None."""
    try:
        with open(tmp, "w", encoding="utf-8"):
            pass
        tmp.unlink()
    except OSError as exc:
        return f"--out {out}: cannot write in {out.parent} ({exc.strerror})"
    try:
        if cache_dir.exists() and not cache_dir.is_dir():
            return f"--cache-dir {cache_dir} is not a folder"
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".probe-{__import__('os').getpid()}"
        with open(probe, "w"):
            pass
        probe.unlink()
    except OSError as exc:
        return f"--cache-dir {cache_dir}: cannot write there ({exc.strerror}); give another with --cache-dir"
    return None
