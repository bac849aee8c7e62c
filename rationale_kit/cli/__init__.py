"""The command line: ``python -m rationale_kit {run,report,numbers,train,align,plausibility,compare,export-data,quote,explain} ...``."""
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
    from rationale_kit.workbook.runner import run_series

    overrides = _overrides(args.overrides)
    results = run_series(args.profile, only=args.only, start=args.start, force=args.force, overrides=overrides)
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


def _train(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rationale_kit train",
        description="Train one coding model of a profile outside the notebooks (e.g. on several GPUs: "
                    "torchrun --nproc_per_node 4 -m rationale_kit train --profile mimic --model plm_icd).")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--model", required=True, choices=["caml", "laat", "plm_icd"])
    ap.add_argument("--out", default=None, help="output folder (default: artifacts/<profile>/02_train/<model>)")
    ap.add_argument("--overrides", default=None, help="JSON object of parameter overrides")
    args = ap.parse_args(argv)
    from pathlib import Path

    from rationale_kit import data
    from rationale_kit.workbook.protocols.data import label_space
    from rationale_kit.workbook.protocols.train import fit_model
    from rationale_kit.core.runtime import pick_device
    from rationale_kit.workbook.context import artifacts_root

    from rationale_kit.core.config import load_profile

    prof = load_profile(args.profile, _overrides(args.overrides))
    with _profile_lock(prof, "train"):  # never while a run (or another train) writes the profile's artifacts
        ds = data.load_dataset(prof)
        out = args.out or str(artifacts_root(prof) / "02_train" / args.model)
        res = fit_model(args.model, prof, ds.docs, label_space(ds.docs), Path(out),
                        pick_device(prof.common.device))
    print(f"{args.model}: best epoch {res.best_epoch}, threshold {res.threshold:.3f}, val {res.val_metrics}")
    return 0


def _report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rationale_kit report",
                                 description="Write runs/<profile>/report.html and report.md from the saved artifacts.")
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml or a path (default: default)")
    ap.add_argument("--overrides", default=None, help="JSON object of parameter overrides")
    ap.add_argument("--runs-dir", default=None, help="folder of the executed notebooks (default: runs/<profile>)")
    args = ap.parse_args(argv)
    from rationale_kit.core.config import load_profile
    from rationale_kit.core.runtime import ROOT
    from rationale_kit.workbook.report import build_report

    prof = load_profile(args.profile, _overrides(args.overrides))
    with _profile_lock(prof, "report"):
        html_path, md_path = build_report(prof, args.runs_dir or ROOT / "runs" / prof.name)
    print(f"report: {html_path}\nmarkdown: {md_path}")
    return 0


def _numbers(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rationale_kit numbers",
        description="Print every number the README quotes, regenerated from a run's artifacts (seeds, intervals, "
                    "spread across seeds), as a Markdown block between <!-- numbers:begin/end profile=P --> markers.")
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml or a path (default: default)")
    ap.add_argument("--overrides", default=None, help="JSON object of parameter overrides")
    ap.add_argument("--into", default=None, help="replace the profile's marked block in this file (e.g. README.md)")
    args = ap.parse_args(argv)
    from rationale_kit.core.config import ConfigError, load_profile
    from rationale_kit.core.records import DataError
    from rationale_kit.workbook.context import artifacts_root
    from rationale_kit.workbook.numbers import numbers_block, splice

    try:
        prof = load_profile(args.profile, json.loads(args.overrides) if args.overrides else None)
        block = numbers_block(prof, artifacts_root(prof))
        if args.into:
            from pathlib import Path

            target = Path(args.into)
            target.write_text(splice(target.read_text(encoding="utf-8"), block, prof.name), encoding="utf-8")
            print(f"numbers of profile {prof.name} written into {target}")
        else:
            sys.stdout.write(block)
    except (DataError, ConfigError, OSError, json.JSONDecodeError) as exc:
        where = f"{args.into}: " if args.into and isinstance(exc, DataError) and "markers" in str(exc) else ""
        print(f"error: {where}{exc}", file=sys.stderr)
        return 2
    return 0


def _export_data(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rationale_kit export-data",
        description="Write a profile's canonical tables (what notebook 01 saves) as DIR/docs.jsonl "
                    "(note_id, text, codes, split, annotated, fewshot, credentialed) and DIR/spans.jsonl "
                    "(note_id, code, start, end, granularity, source).")
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml or a path (default: default)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--overrides", default=None, help="JSON object of parameter overrides")
    args = ap.parse_args(argv)
    from rationale_kit import data
    from rationale_kit.core.config import ConfigError, load_profile

    try:
        prof = load_profile(args.profile, _overrides(args.overrides))
        ds = data.load_dataset(prof)
        docs_path, spans_path = data.export_dataset(ds, args.out)
    except (data.DataError, ConfigError, OSError) as exc:
        return _error(exc)
    print(f"{len(ds.docs)} documents: {docs_path}\n{len(data.human_spans(ds))} spans: {spans_path}")
    return 0


def _overrides(text: str | None) -> dict | None:
    """The ``--overrides`` JSON object; anything else is a ConfigError naming the option."""
    from rationale_kit.core.config import ConfigError

    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--overrides: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--overrides: expected a JSON object of sections, got {type(value).__name__}")
    return value


def _profile_lock(prof, command: str):
    """The lock of ``runs/<profile>`` that ``run`` holds too: one writer of a profile's artifacts."""
    from rationale_kit.core.lock import ProfileLock
    from rationale_kit.core.runtime import ROOT

    return ProfileLock(ROOT / "runs" / prof.name / ".lock", prof.name, command)


def _error(exc: BaseException) -> int:
    """Exit status 2 with one line on stderr."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Dispatch a command. Bad input (a profile or overrides that do not validate, a data file
    that does not load, a profile that another process holds) exits with status 2 and one line on
    stderr; Ctrl-C exits with 130 (answers already cached stay cached)."""
    from rationale_kit.core.config import ConfigError
    from rationale_kit.core.lock import RunLocked
    from rationale_kit.core.records import DataError

    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted (answers and artifacts written so far are kept)", file=sys.stderr)
        return 130
    except (ConfigError, DataError, RunLocked) as exc:
        return _error(exc)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": "the notebook series", "report": "rewrite runs/<profile>/report.html from the artifacts",
                "train": "train one model (multi-GPU with torchrun)", "align": "align LLM quotes to notes", "plausibility": "score spans against gold spans",
                "compare": "compare two span sources on the notes both cover (paired bootstrap)",
                "quote": "LLM quotes for your own notes, aligned to spans",
                "explain": "codes and rationales of your own notes under a trained coder"}
    commands["export-data"] = "write a profile's documents and human spans as JSONL"
    commands["numbers"] = "the README's numbers, regenerated from a run's artifacts (Markdown block)"
    if argv and argv[0] == "export-data":
        return _export_data(argv[1:])
    if not argv or argv[0] not in commands:
        print(f"usage: python -m rationale_kit {{{','.join(commands)}}} [options]\n" + "\n".join(f"  {k:<13} {v}" for k, v in commands.items()), file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _run(rest)
    if cmd == "train":
        return _train(rest)
    if cmd == "report":
        return _report(rest)
    if cmd == "numbers":
        return _numbers(rest)
    if cmd == "explain":
        from rationale_kit.cli.explain import main as explain_main

        return explain_main(rest)
    if cmd == "quote":
        from rationale_kit.cli.quote import main as quote_main

        return quote_main(rest)
    from rationale_kit.cli import measures as cli

    return {"align": cli.align_main, "plausibility": cli.plausibility_main, "compare": cli.compare_main}[cmd](rest)

