"""Throughput of ``explain`` (rationale_kit.workbook.explain) per source on this machine.

For each saved model and each source it explains the same ``--notes`` test notes of the profile
(their predicted codes, at least one per note) twice through :meth:`Explainer.explain_batch`, the
call the ``explain`` command makes: in batches of ``--batch-size`` notes, and one note at a time. It
reports notes per second (the prediction pass included) for both and their ratio (batched over one
at a time; above 1: batching pays). Times are process CPU seconds with ``--threads`` torch threads
(other jobs share this machine's cores, so wall time is noisy), after one warm-up batch; the entity
linker's one-off build (knowledge base and index) is done before timing and printed apart. The llm
source (the profile's backend, by default the bundled SmolLM2 on this CPU) runs on ``--llm-notes``
notes without a cache.

    .venv/bin/python benchmarks/explain.py [--profile default] [--models caml,laat,plm_icd] [--notes 20]
        [--docs-profile P] [--sources attention,gradient,attention_x_gradient,entity] [--llm-notes 0] [--batch-size 8]
        [--threads 1] [--out benchmarks/out/explain.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rationale_kit import data  # noqa: E402
from rationale_kit.core.config import load_profile  # noqa: E402
from rationale_kit.workbook.context import artifacts_root  # noqa: E402
from rationale_kit.workbook.explain import Explainer, settings_from_profile  # noqa: E402


def run(explainer: Explainer, docs: pd.DataFrame, source: str, batch: int) -> tuple[float, int]:
    """CPU seconds to explain ``docs`` with ``source`` in batches of ``batch`` notes; and the
    (note, code) pairs explained."""
    t0, pairs = time.process_time(), 0
    for b in range(0, len(docs), batch):
        ex = explainer.explain_batch(docs.iloc[b:b + batch], sources=[source])
        pairs += int(ex.predictions.explained.sum())
    return time.process_time() - t0, pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--models", default="caml,laat,plm_icd", help="names under artifacts/<profile>/02_train, or folders")
    ap.add_argument("--docs-profile", default=None, help="profile whose test notes are explained (default: --profile)")
    ap.add_argument("--notes", type=int, default=20)
    ap.add_argument("--sources", default="attention,gradient,attention_x_gradient,entity")
    ap.add_argument("--llm-notes", type=int, default=0, help="notes for the llm source (0: not measured)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = load_profile(args.profile)
    ds = data.load_dataset(load_profile(args.docs_profile) if args.docs_profile else prof)
    test = ds.docs[ds.docs.split == "test"]
    docs = test[["note_id", "text"]].head(args.notes).reset_index(drop=True)
    sources = [s for s in args.sources.split(",") if s]
    if args.llm_notes:
        sources.append("llm")
    rows = []
    print(f"models of profile {prof.name}; {len(docs)} test notes of profile {args.docs_profile or prof.name}, {docs.text.str.len().mean():.0f} characters on average; "
          f"batch {args.batch_size}; torch threads {args.threads}; CPU seconds", flush=True)
    for m in args.models.split(","):
        folder = Path(m) if Path(m).exists() else artifacts_root(prof) / "02_train" / m
        settings = settings_from_profile(prof, sources=tuple(sources), batch_size=args.batch_size)
        ex = Explainer(folder, settings, device="cpu")
        folder = folder.resolve()
        trained = folder.parts[-3] if folder.parts[-2] == "02_train" else str(folder)  # the profile it was trained on
        name = f"{ex.name} ({trained})"
        ex.explain_batch(docs.head(2), sources=["attention"] if getattr(ex.model, "has_attention", True) else ["gradient"])
        for src in sources:
            sub = docs.head(args.llm_notes) if src == "llm" else docs
            if src == "entity":
                t0 = time.process_time()
                ex.linker([])
                print(f"  {name}: entity linker built in {time.process_time() - t0:.1f} CPU s (once per run)", flush=True)
            ex.explain_batch(sub.head(1), sources=[src])  # warm-up
            t_b, pairs = run(ex, sub, src, args.batch_size)
            t_1, _ = run(ex, sub, src, 1)
            row = {"model": name, "source": src, "notes": len(sub), "pairs": pairs,
                   "batched_notes_per_s": len(sub) / t_b, "single_notes_per_s": len(sub) / t_1,
                   "ratio": t_1 / t_b, "batched_cpu_s": t_b, "single_cpu_s": t_1}
            rows.append(row)
            print(f"  {name:16s} {src:22s} {len(sub):3d} notes {pairs:4d} pairs  batched {row['batched_notes_per_s']:7.2f} notes/s  "
                  f"one at a time {row['single_notes_per_s']:7.2f} notes/s  ratio {row['ratio']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    print("\n| model | source | notes | pairs | notes/s batched | notes/s one at a time | ratio |\n|---|---|---|---|---|---|---|")
    for r in table.itertuples(index=False):
        print(f"| {r.model} | {r.source} | {r.notes} | {r.pairs} | {r.batched_notes_per_s:.2f} | "
              f"{r.single_notes_per_s:.2f} | {r.ratio:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
