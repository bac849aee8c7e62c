"""Record the LLM answers the test suite's shared smoke series replays (tests/conftest.py).

Runs notebooks 01-03 on the ``smoke`` profile, in a temporary folder, with the profile's own LLM
backend (the bundled local SmolLM2), every answer written to a replay file
(``rationales.llm.record_file``); then replaces ``tests/data/smoke_llm_replay.jsonl`` with it.
Run it again whenever the prompts, the smoke data or the local backend change (the tests say so:
``ReplayMissError``). About two minutes on 2 CPU cores.

Usage: python tools/record_smoke_replay.py [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rationale_kit.workbook.runner import run_series  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "data" / "smoke_llm_replay.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"replay file to write (default {DEFAULT_OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smoke_replay_") as tmp:
        tmp = Path(tmp)
        record = tmp / "record.jsonl"
        overrides = {"common": {"artifacts_dir": str(tmp / "artifacts"), "figures_dir": str(tmp / "figures")},
                     "rationales": {"llm": {"record_file": str(record)}}}
        results = run_series("smoke", only=["01", "02", "03"], force=True, runs_dir=tmp / "runs", overrides=overrides)
        bad = [r for r in results if r["status"] != "ok"]
        if bad:
            print(f"error: {bad[0]['notebook']} {bad[0]['status']}: {bad[0].get('error')}", file=sys.stderr)
            return 2
        rows = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            print(f"error: notebook 03 recorded no LLM answer in {record}", file=sys.stderr)
            return 2
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record, args.out)
    models = sorted({f"{r.get('backend')}:{r.get('model')}" for r in rows})
    print(f"wrote {len(rows)} answers ({', '.join(models)}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
