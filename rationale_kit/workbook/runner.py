"""The papermill runner of the notebook series: ``run_series``, its ``state.json``, the profile
lock, the package hash that decides what re-runs, and the figures' provenance.

The notebook side (``setup``, ``Context``, artifact folders) is :mod:`rationale_kit.workbook.context`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from rationale_kit.core.config import Profile, load_profile
from rationale_kit.core.lock import ProfileLock, RunLocked  # noqa: F401 - RunLocked: what run_series raises
from rationale_kit.core.runtime import ROOT, atomic_write_text, git_commit
from rationale_kit.workbook.context import (
    NOTEBOOKS,
    MANIFEST_FILE,
    NOTEBOOKS_DIR,
    artifacts_root,
    figures_dir,
)


def _package_hash() -> str:
    """Hash of the package sources: a change in rationale_kit re-runs the notebooks."""
    h = hashlib.sha256()
    pkg = ROOT / "rationale_kit"
    for p in sorted(pkg.rglob("*")):
        # the report and numbers modules do not change what the notebooks compute
        if p.is_file() and p.suffix in {".py", ".yaml", ".txt", ".json"} and "__pycache__" not in p.parts \
                and p not in (pkg / "workbook" / "report.py", pkg / "workbook" / "numbers.py"):
            h.update(str(p.relative_to(pkg)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _select(only: Iterable[str] | None, start: str | None) -> list[str]:
    def match(token: str) -> str:
        hits = [n for n in NOTEBOOKS if n == token or n[:2] == token.zfill(2)]
        if not hits:
            raise SystemExit(f"unknown notebook {token!r}; the series is {NOTEBOOKS}")
        return hits[0]

    chosen = list(NOTEBOOKS)
    if start:
        chosen = chosen[NOTEBOOKS.index(match(start)):]
    if only:
        wanted = {match(t) for t in only}
        chosen = [n for n in chosen if n in wanted]
    return chosen


def _load_state(state_path: Path) -> dict:
    """The runner's ``state.json``; an unreadable one counts as "nothing done" (with a warning)."""
    if not state_path.exists():
        return {}
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise ValueError("not a JSON object of notebook entries")
        return state
    except (OSError, ValueError) as exc:
        print(f"warning: {state_path} is unreadable ({type(exc).__name__}: {exc}); treating every "
              "notebook as not run")
        return {}


def _upstream_digest(prof: Profile, name: str) -> bytes:
    """What the earlier notebooks of the series left for ``name``: each one's output hashes (from its
    manifest), or a marker when it has none, whether or not it is in this run's selection."""
    h = hashlib.sha256()
    for up in NOTEBOOKS[: NOTEBOOKS.index(name)] if name in NOTEBOOKS else []:
        path = artifacts_root(prof) / up / MANIFEST_FILE
        h.update(up.encode())
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            h.update(json.dumps(m.get("output_hashes", m), sort_keys=True, default=str).encode())
        except (OSError, ValueError, AttributeError):
            h.update(b"<none>")
    return h.digest()


def _resolve_profile(profile: str | os.PathLike) -> tuple[str, Path]:
    """``(what the notebooks get, the profile file)``: a path (relative to the caller's working
    directory) becomes absolute, since the notebooks run in notebooks/; a name stays a name."""
    p = Path(profile)
    if p.suffix:
        p = p.expanduser().resolve()
        return str(p), p
    return str(profile), ROOT / "params" / f"{profile}.yaml"


def run_series(
    profile: str = "default",
    only: Iterable[str] | None = None,
    start: str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    runs_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Run the notebooks in order with papermill; returns one status dict per notebook.

    A notebook is skipped when its source, the profile file and the profile it resolves to (with a
    ``base:`` profile's keys), the overrides, the package sources and
    the outputs of every earlier notebook of the series (their manifests' hashes, whether or not
    they are selected now) have not changed since its last *finished* run (``force`` re-runs). A
    notebook is marked as running in ``state.json`` before it starts and as done only after it
    returned; a run killed part-way is never taken as done, and its partial executed notebook is
    renamed ``<name>.partial.ipynb``. A failure keeps the executed notebook, says which cell failed
    and stops the series. The kernel imports ``rationale_kit`` from this checkout (``PYTHONPATH``).
    A second run of the same profile while one is alive is refused (:class:`RunLocked`); so is a
    run while ``train`` or ``report`` of the profile holds its lock (:class:`ProfileLock`).
    """
    import logging

    import papermill as pm

    nb_profile, profile_file = _resolve_profile(profile)
    prof = load_profile(nb_profile, overrides)  # validate before starting anything
    runs = Path(runs_dir) if runs_dir else ROOT / "runs" / prof.name
    runs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    os.environ["PAPERMILL_EXECUTION"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the kernel must import this checkout's package, not wherever the environment's editable
    # install points (one environment shared by two checkouts)
    paths = [str(ROOT)] + [q for q in os.environ.get("PYTHONPATH", "").split(os.pathsep) if q and q != str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    with ProfileLock(runs / ".lock", prof.name, "run"):
        results = _run_locked(pm, prof, nb_profile, profile_file, only, start, force, overrides, runs, notebooks_dir)
    _write_provenance(prof, results, runs)
    report_line = _report(prof, runs, results, str(profile))
    print("\noutputs:")
    print(f"  executed notebooks: {runs}")
    print(f"  artifacts:          {artifacts_root(prof)}")
    print(f"  figures:            {figures_dir(prof)}")
    print(f"  report:             {report_line}")
    for r in results:
        print(f"  {r['notebook']:<20} {r['status']:<8} {r.get('seconds', '')}")
    return results


def _run_locked(pm: Any, prof: Profile, nb_profile: str, profile_file: Path, only: Iterable[str] | None,
                start: str | None, force: bool, overrides: dict | None, runs: Path,
                notebooks_dir: str | os.PathLike | None) -> list[dict]:
    state_path = runs / "state.json"
    state = _load_state(state_path)
    base = hashlib.sha256()
    base.update(profile_file.read_bytes())
    # the resolved profile too: a profile with ``base:`` inherits keys its own file does not show
    base.update(json.dumps(dataclasses.asdict(prof), sort_keys=True, default=str).encode())
    base.update(json.dumps(overrides or {}, sort_keys=True).encode())
    base.update(_package_hash().encode())
    results = []
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    chosen = _select(only, start)
    for name, entry in list(state.items()):  # runs that never finished (killed, machine lost)
        if entry.get("status") == "running":
            partial = runs / f"{name}.running.ipynb"
            note = ""
            if partial.exists():
                os.replace(partial, runs / f"{name}.partial.ipynb")
                note = f"; its partial executed notebook is kept as {runs / f'{name}.partial.ipynb'}"
            print(f"note: the run of {name} started {entry.get('started', '?')} (pid {entry.get('pid', '?')}) "
                  f"never finished, so it counts as not run{note}")
            state[name] = {"status": "interrupted", "started": entry.get("started")}
    atomic_write_text(state_path, json.dumps(state, indent=1))
    for i, name in enumerate(chosen, 1):
        src = nb_dir / f"{name}.ipynb"
        out = runs / f"{name}.ipynb"
        running = runs / f"{name}.running.ipynb"
        if not src.exists():
            print(f"[{i}/{len(chosen)}] {name}: notebook not found at {src}; stopping")
            results.append({"notebook": name, "status": "missing"})
            break
        key = hashlib.sha256(base.digest() + src.read_bytes() + _upstream_digest(prof, name)).hexdigest()[:16]
        manifest = artifacts_root(prof) / name / MANIFEST_FILE
        prev = state.get(name, {})
        if (not force and prev.get("status", "done") == "done" and prev.get("key") == key
                and manifest.exists() and out.exists()):
            print(f"[{i}/{len(chosen)}] {name}: unchanged since its last run, skipped ({prev.get('seconds')} s then)")
            results.append({"notebook": name, "status": "skipped", "seconds": prev.get("seconds"), "output": str(out)})
            continue
        print(f"[{i}/{len(chosen)}] {name}: running -> {out}", flush=True)
        state[name] = {"status": "running", "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(state_path, json.dumps(state, indent=1))
        out.unlink(missing_ok=True)  # the previous result no longer describes the artifacts
        t0 = time.time()
        try:
            pm.execute_notebook(
                str(src), str(running), parameters={"profile": nb_profile, "overrides": overrides or {}},
                kernel_name="python3", log_output=True, progress_bar=False, cwd=str(nb_dir),
            )
        except pm.PapermillExecutionError as exc:
            secs = round(time.time() - t0, 1)
            if running.exists():
                os.replace(running, out)
            print(
                f"[{i}/{len(chosen)}] {name}: FAILED after {secs} s in cell {exc.exec_count} "
                f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                f"the executed notebook with the traceback is kept at {out}"
            )
            state[name] = {"status": "failed", "seconds": secs, "error": f"{exc.ename}: {exc.evalue}"}
            atomic_write_text(state_path, json.dumps(state, indent=1))
            results.append({"notebook": name, "status": "failed", "seconds": secs, "output": str(out), "error": f"{exc.ename}: {exc.evalue}"})
            break
        secs = round(time.time() - t0, 1)
        os.replace(running, out)
        state[name] = {"status": "done", "key": key, "seconds": secs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(state_path, json.dumps(state, indent=1))
        print(f"[{i}/{len(chosen)}] {name}: done in {secs} s", flush=True)
        results.append({"notebook": name, "status": "ok", "seconds": secs, "output": str(out)})
    return results


def _report(prof: Profile, runs: Path, results: list[dict], profile: str) -> str:
    """Write the run report; a failure is described, never raised, so notebook results stay visible."""
    try:
        from rationale_kit.workbook.report import build_report

        html_path, md_path = build_report(prof, runs, results)
        return f"{html_path} (and {md_path.name})"
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc(file=sys.stderr)
        return (f"NOT WRITTEN: building the report failed ({type(exc).__name__}: {exc}); the notebook "
                f"results are unaffected; retry with: python -m rationale_kit report --profile {profile}")


def _write_provenance(prof: Profile, results: list[dict], runs: Path) -> None:
    fig_dir = figures_dir(prof)
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Provenance of these figures",
        "",
        f"- profile: `{prof.name}`; dataset: `{prof.common.dataset}`; LLM backend: `{prof.rationales.llm.backend}`",
        f"- git commit: `{git_commit()}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- executed notebooks: `{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`",
        "",
        "| notebook | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['notebook']} | {r['status']} | {r.get('seconds', '')} |" for r in results]
    (fig_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
