"""Benchmark of the notebook series: seconds per notebook of one or two checkouts, side by side.

Each SOURCE is one of:

- a checkout folder whose ``runs/<profile>/state.json`` already holds a finished run (read as is
  with ``--read``; the runner records each notebook's wall seconds there);
- a checkout folder or ``<repository>@<commit>`` to run: the commit is cloned into a
  fresh temporary folder (``git clone``, so the run's provenance names the commit; a folder's uncommitted edits are included with
  ``--worktree``), and the series runs there from empty ``artifacts``/``runs`` (cold: nothing
  reused), with ``python -m rationale_kit run --profile <profile>`` and this interpreter. Two
  sources run one after the other on the same machine, so compare them in one invocation.

Prints per notebook the seconds of each source, the difference and the ratio (first / second),
then the totals. A notebook that did not finish shows its status instead of seconds.

``--interleave`` (two sources): instead of one whole series after the other, notebook by notebook,
alternating which source goes first (A B, B A, A B, ...: each notebook is its own ``run --only``,
so each side pays one process start per notebook). On a machine whose speed drifts within the
hour (measured here: unchanged notebooks 1.25x slower in the second of two sequential series),
this is the comparison to quote; the "whole run" line then sums the per-notebook processes. A
notebook one side does not have (an older commit's shorter series) runs on the other side only,
and a "wall, both ran" line compares the notebooks both sides ran.

    .venv/bin/python benchmarks/series.py --profile default /path/to/before@93e9550 /path/to/after
    .venv/bin/python benchmarks/series.py --interleave --profile default /path/to/before@93e9550 /path/to/after
    .venv/bin/python benchmarks/series.py --read --profile default /tmp/before /tmp/after
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = ("01_data", "02_train", "03_rationales", "04_alignment", "05_faithfulness", "06_plausibility",
             "07_guided_learning", "08_few_shot", "09_open_questions")


def read_state(checkout: Path, profile: str) -> dict[str, dict]:
    """``runs/<profile>/state.json`` of ``checkout``: notebook -> its entry (status, seconds)."""
    path = checkout / "runs" / profile / "state.json"
    if not path.exists():
        raise SystemExit(f"series: no run state at {path} (run the series there first, or drop --read)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"series: {path} is not valid JSON ({exc})")
    if not isinstance(state, dict):
        raise SystemExit(f"series: {path}: expected an object of notebooks")
    return state


def materialise(source: str, into: Path, worktree: bool) -> Path:
    """Copy the tracked files of ``source`` (``folder`` or ``folder@commit``) into ``into``."""
    repo, _, commit = source.partition("@")
    repo_path = Path(repo).resolve()
    if not (repo_path / ".git").exists() and not commit:
        raise SystemExit(f"series: {repo} is not a git checkout")
    into.parent.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "-C", str(repo_path), "rev-parse", commit or "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    # a clone, not an archive: the runner's provenance (figures/PROVENANCE.md) names the commit
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo_path), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    if worktree and not commit:  # uncommitted edits of tracked files, and new untracked ones
        files = subprocess.run(["git", "-C", str(repo_path), "ls-files", "-m", "-o", "--exclude-standard"],
                               check=True, capture_output=True, text=True).stdout.split()
        for f in files:
            src = repo_path / f
            if src.is_file():
                (into / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into / f)
    return into


def run_series(checkout: Path, profile: str, log: Path, only: str | None = None) -> float:
    """Run the series (or the notebook ``only``) in ``checkout`` (its own package on PYTHONPATH);
    returns the wall seconds. The log is appended to."""
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "rationale_kit", "run", "--profile", profile] + (["--only", only] if only else [])
    t0 = time.time()
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, cwd=checkout, env=env, stdout=fh, stderr=subprocess.STDOUT)
    secs = time.time() - t0
    if proc.returncode != 0:
        print(f"series: the run in {checkout} exited with {proc.returncode}; see {log}")
    return secs


def interleaved(checkouts: list[Path], profile: str, logs: list[Path]) -> list[dict[str, float]]:
    """Both series notebook by notebook, alternating which source goes first (ABBA...), so that a
    machine whose speed drifts during the hour slows both sides alike; returns each side's wall
    seconds per notebook. A side whose notebook fails stops there (the runner then has nothing to
    build on); a notebook a side does not have (an older commit's shorter series) is not run there
    and is said so."""
    walls: list[dict[str, float]] = [{} for _ in checkouts]
    alive = [True] * len(checkouts)
    for i, nb in enumerate(NOTEBOOKS):
        order = range(len(checkouts)) if i % 2 == 0 else reversed(range(len(checkouts)))
        for k in order:
            if not alive[k]:
                continue
            if not (checkouts[k] / "notebooks" / f"{nb}.ipynb").exists():
                print(f"series: {checkouts[k]} has no notebook {nb}; not run there", flush=True)
                continue
            walls[k][nb] = run_series(checkouts[k], profile, logs[k], only=nb)
            alive[k] = read_state(checkouts[k], profile).get(nb, {}).get("status") == "done"
    return walls


def table(names: list[str], states: list[dict], walls: list[float | None],
          per_notebook: list[dict[str, float]] | None = None) -> str:
    """The side-by-side table (seconds per notebook, difference and ratio for two sources).
    ``per_notebook`` (interleaved runs): each side's wall seconds per notebook; when the sides ran
    different notebooks, a last line compares the walls of the notebooks both ran."""
    order = [n for n in NOTEBOOKS if any(n in s for s in states)]
    order += sorted({n for s in states for n in s} - set(order))
    w = max(12, *(len(n) for n in names))
    head = f"{'notebook':<20}" + "".join(f"{n:>{w + 2}}" for n in names)
    if len(states) == 2:
        head += f"{'difference':>12}{'ratio':>8}"
    lines = [head, "-" * len(head)]
    totals = [0.0] * len(states)

    def cell(entry: dict | None) -> tuple[str, float | None]:
        if entry is None:
            return "-", None
        if entry.get("status") == "done" and isinstance(entry.get("seconds"), (int, float)):
            return f"{entry['seconds']:.1f}", float(entry["seconds"])
        return str(entry.get("status", "?")), None

    for nb in order:
        cells = [cell(s.get(nb)) for s in states]
        line = f"{nb:<20}" + "".join(f"{c:>{w + 2}}" for c, _ in cells)
        vals = [v for _, v in cells]
        if None not in vals:  # totals over the notebooks every source finished
            totals = [t + v for t, v in zip(totals, vals)]
        if len(states) == 2 and None not in vals:
            line += f"{vals[1] - vals[0]:>+12.1f}{vals[0] / vals[1] if vals[1] else float('nan'):>8.2f}"
        lines.append(line)
    lines.append("-" * len(head))
    line = f"{'sum (all finished)':<20}" + "".join(f"{t:>{w + 2}.1f}" for t in totals)
    if len(states) == 2 and totals[1]:
        line += f"{totals[1] - totals[0]:>+12.1f}{totals[0] / totals[1]:>8.2f}"
    lines.append(line)
    if any(x is not None for x in walls):
        line = f"{'whole run (wall)':<20}" + "".join(
            f"{(f'{x:.1f}' if x is not None else '-'):>{w + 2}}" for x in walls)
        if len(walls) == 2 and None not in walls and walls[1]:
            line += f"{walls[1] - walls[0]:>+12.1f}{walls[0] / walls[1]:>8.2f}"
        lines.append(line)
    if per_notebook and len(per_notebook) == 2 and set(per_notebook[0]) != set(per_notebook[1]):
        both = [n for n in NOTEBOOKS if n in per_notebook[0] and n in per_notebook[1]]
        w0, w1 = (sum(p[n] for n in both) for p in per_notebook)
        line = f"{'wall, both ran':<20}{w0:>{w + 2}.1f}{w1:>{w + 2}.1f}"
        if w1:
            line += f"{w1 - w0:>+12.1f}{w0 / w1:>8.2f}"
        lines.append(line + f"   ({len(both)} notebooks: {', '.join(n[:2] for n in both)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", help="one or two checkouts (folder, or folder@commit to run)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--read", action="store_true",
                    help="read runs/<profile>/state.json of each checkout instead of running the series")
    ap.add_argument("--worktree", action="store_true", help="include uncommitted edits of a folder source")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (their artifacts and runs)")
    ap.add_argument("--interleave", action="store_true",
                    help="two sources: run them notebook by notebook, alternating which goes first (drift cancels)")
    args = ap.parse_args(argv)
    if len(args.sources) > 2:
        ap.error("at most two sources")
    states, walls, per_notebook = [], [], None
    if args.read:
        for src in args.sources:
            states.append(read_state(Path(src), args.profile))
            walls.append(None)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="rk-series-"))
        try:
            if args.interleave:
                checkouts = [materialise(src, tmp / f"source{i}", args.worktree) for i, src in enumerate(args.sources)]
                print(f"running the {args.profile} series of {' and '.join(args.sources)} interleaved in {tmp}", flush=True)
                per_notebook = interleaved(checkouts, args.profile, [tmp / f"source{i}.log" for i in range(len(checkouts))])
                walls = [sum(p.values()) for p in per_notebook]
                states = [read_state(c, args.profile) for c in checkouts]
            for i, src in enumerate(args.sources if not args.interleave else []):
                checkout = materialise(src, tmp / f"source{i}", args.worktree)
                print(f"[{i + 1}/{len(args.sources)}] {src}: running the {args.profile} series in {checkout}",
                      flush=True)
                walls.append(run_series(checkout, args.profile, tmp / f"source{i}.log"))
                states.append(read_state(checkout, args.profile))
        finally:
            if args.keep:
                print(f"copies kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nseries '{args.profile}', seconds per notebook (wall, as the runner records them)")
    print(table(list(args.sources), states, walls, per_notebook))
    return 0


if __name__ == "__main__":
    sys.exit(main())
