"""The on-disk answer cache and record files (JSONL): cache keys, reading files with damaged or torn
lines (skipped with a warning), and appending records that survive the process being killed."""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from rationale_kit.rationales.llm.parsing import validate
from rationale_kit.rationales.llm.prompting import Prompt, short_sha

if TYPE_CHECKING:
    from rationale_kit.rationales.llm.backends.base import Backend

log = logging.getLogger(__name__)


CACHE_FILE = "llm_cache.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    out = []
    if not path.exists():
        return out
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                log.warning("%s:%d: skipping an unreadable line (not UTF-8 JSON: a run stopped while writing?)", path, lineno)
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


class JsonlLog:
    """Append-only JSONL. Each record is written and flushed at once (so it survives the process
    being killed); with ``fsync`` a background task also forces it to the disk (group commit: one
    fsync in a worker thread covers every record appended since the last one, so neither the
    event loop nor the requests wait on the disk); ``close`` syncs what is left."""

    def __init__(self, path: Path, fsync: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        else:
            torn = False
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        if torn:  # a killed run left half a line: start on a fresh one
            self._fh.write("\n")
        self._fsync = fsync
        self._dirty = False
        self._syncer: Optional[asyncio.Task] = None

    def append(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._dirty = True

    def _sync(self) -> None:
        try:
            os.fsync(self._fh.fileno())
        except (OSError, ValueError):
            pass

    async def _sync_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.to_thread(self._sync)

    async def aappend(self, rec: dict) -> None:
        self.append(rec)
        if self._fsync and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.create_task(self._sync_loop())

    async def aclose(self) -> None:
        if self._syncer is not None and not self._syncer.done():
            try:
                await self._syncer
            except BaseException:  # noqa: BLE001 - the final sync below still runs
                pass
        self.close()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            if self._fsync or self._dirty:
                self._sync()
            self._fh.close()


def cache_key(backend: Backend, prompt: Prompt) -> str:
    """Key of a cached answer: backend, model, prompt sha and every setting that determines the
    answer (:meth:`Backend.settings`: temperature, output budget, decoding constraints), so that
    changing any of them asks again instead of reusing an answer given under other settings."""
    settings = json.dumps(backend.settings(), sort_keys=True, default=str)
    return short_sha(backend.name, backend.model, prompt.sha, settings)


def load_cache(path: Path, schema: Mapping[str, Any], keep: Optional[set] = None) -> tuple[dict[str, dict], list[str]]:
    """Cache entries by key, and one problem per line that was skipped (``file:line: why``).

    A damaged line (bytes that are not UTF-8, not JSON, not an object, no ``key`` or ``outcome``,
    an unknown outcome, an ok answer whose ``parsed`` is not a valid answer object) is skipped
    with a warning naming the file and line, and its request is asked again; it never stops the
    run. ``keep``: the outcomes to keep (None: all)."""
    cache: dict[str, dict] = {}
    problems: list[str] = []
    if not path.exists():
        return cache, problems
    outcomes = {"ok", "truncated", "failed", "blocked", "empty"}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not JSON ({exc.msg}; a run stopped while writing?)")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{where}: not a JSON object")
                continue
            if not isinstance(rec.get("key"), str):
                problems.append(f"{where}: no 'key'")
                continue
            if rec.get("outcome") not in outcomes:
                problems.append(f"{where}: 'outcome' is {rec.get('outcome')!r}, not one of {sorted(outcomes)}")
                continue
            if rec["outcome"] in ("ok", "truncated"):
                parsed = rec.get("parsed")
                errs = validate(parsed, schema) if isinstance(parsed, dict) else [f"'parsed' is {type(parsed).__name__}, not an object"]
                if errs:
                    problems.append(f"{where}: {errs[0]}")
                    continue
                if rec["outcome"] == "truncated" and not isinstance(rec.get("truncated_codes"), list):
                    problems.append(f"{where}: a truncated answer without 'truncated_codes'")
                    continue
            if keep is None or rec["outcome"] in keep:
                cache[rec["key"]] = rec
    for p in problems:
        log.warning("skipping a damaged LLM cache line (its request is asked again): %s", p)
    if problems:
        log.warning("%d damaged line(s) skipped in %s", len(problems), path)
    return cache, problems
