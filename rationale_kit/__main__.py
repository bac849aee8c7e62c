"""Command line: ``python -m rationale_kit {run,align,plausibility} ...``."""
from __future__ import annotations

import argparse
import json
import sys


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rationale_kit run", description="Run the notebook series with papermill.")
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml or a path (default: default)")
    ap.add_argument("--only", nargs="+", help="notebooks to run, by number (03) or name")
    ap.add_argument("--from", dest="start", help="start the series at this notebook")
    ap.add_argument("--force", action="store_true", help="re-run notebooks even when unchanged")
    ap.add_argument("--overrides", default=None, help="JSON object of parameter overrides")
    args = ap.parse_args(argv)
    from .pipeline import run_series

    overrides = json.loads(args.overrides) if args.overrides else None
    results = run_series(args.profile, only=args.only, start=args.start, force=args.force, overrides=overrides)
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": "the notebook series", "align": "align LLM quotes to notes", "plausibility": "score spans against gold spans"}
    if not argv or argv[0] not in commands:
        print("usage: python -m rationale_kit {run,align,plausibility} [options]\n" + "\n".join(f"  {k:<13} {v}" for k, v in commands.items()), file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _run(rest)
    from . import cli

    return cli.align_main(rest) if cmd == "align" else cli.plausibility_main(rest)


if __name__ == "__main__":
    sys.exit(main())
