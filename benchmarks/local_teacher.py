"""The bundled local LLM as a teacher, before and after verbatim decoding, and its throughput.

On the notes notebook 03 gives the LLM under a profile (``max_llm_notes`` evaluation notes and
``train_notes_for_teacher`` training notes), both teachers (zero-shot and few-shot with
``shots_per_code``), the local backend (structured decoding) runs twice: with quotes free
(``verbatim=False``, as before) and constrained to substrings of the note (``verbatim=True``).
For each it reports, per teacher: pairs asked, quotes, quotes aligned to the note (the profile's
alignment threshold) per pair, notes with at least one aligned span, and the MDACE
position-independent token F1 (``token_position_independent``) against the human spans of the
notes it covers (the notes with an aligned span; pairs with gold spans).

Throughput: the same zero-shot requests with verbatim decoding at batch 1 and at ``--batch``
(default: the profile's ``local_batch_size``, at least 4), generated tokens per second of wall
time, one run each, side by side. Run it niced on a shared machine::

    nice -n 10 python benchmarks/local_teacher.py --profile default [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from rationale_kit.rationales import alignment, llm
from rationale_kit.core import config
from rationale_kit import data
from rationale_kit.workbook.protocols.data import eval_docs, teacher_notes  # noqa: E402
from rationale_kit.workbook.protocols.rationales import llm_requests  # noqa: E402
from rationale_kit.metrics.plausibility import mdace_measures  # noqa: E402


def teacher_docs(ds, prof) -> pd.DataFrame:
    r = prof.rationales
    evald = eval_docs(ds.docs)
    llm_docs = evald.head(r.max_llm_notes) if r.max_llm_notes else evald
    train = teacher_notes(ds.docs, r.train_notes_for_teacher, prof.common.seed)
    return pd.concat([llm_docs, train], ignore_index=True)


def measure(ds, docs, answers, prof) -> dict:
    pairs = {(n, c) for n, cs in zip(docs.note_id, docs.codes) for c in cs}
    ok = answers[answers.status == "ok"]
    aligned = alignment.align_quotes(docs, ok[["note_id", "code", "quote"]].reset_index(drop=True),
                                     threshold=prof.alignment.threshold, occurrences=prof.alignment.occurrences)
    spans = alignment.aligned_to_spans(aligned, "llm")
    n_aligned_quotes = int(aligned[aligned.start.notna()].quote_row.nunique()) if len(aligned) else 0
    covered = sorted(set(spans.note_id))
    gold = ds.spans[ds.spans.note_id.isin(covered)]
    gold = gold[[(n, c) in pairs for n, c in zip(gold.note_id, gold.code)]]
    f1 = None
    if covered and len(gold):
        f1 = mdace_measures(gold, spans, docs[docs.note_id.isin(covered)], pairs="gold")["token_position_independent"]["f1"]
    return {"pairs": len(pairs), "quotes": int(len(ok)), "aligned_quotes": n_aligned_quotes,
            "aligned_quotes_per_pair": round(n_aligned_quotes / max(1, len(pairs)), 3),
            "aligned_spans": int(len(spans)), "notes_covered": len(covered), "notes": int(len(docs)),
            "pi_token_f1_covered": None if f1 is None else round(float(f1), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--decodings", nargs="+", choices=["free", "verbatim"], default=["free", "verbatim"])
    ap.add_argument("--no-throughput", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    prof = config.load_profile(args.profile)
    cfg = prof.rationales.llm
    ds = data.load_dataset(prof)
    docs = teacher_docs(ds, prof)
    teachers = {"llm_zero": 0, "llm_few": cfg.shots_per_code}
    reqs = {t: llm_requests(ds, docs, k, prof) for t, k in teachers.items()}
    results: dict = {"profile": prof.name, "notes": len(docs), "quality": [], "throughput": []}
    shared = llm.LocalBackend(path=cfg.local_path, max_new_tokens=cfg.max_new_tokens).load()

    def backend(verbatim: bool, batch: int) -> llm.LocalBackend:
        b = llm.LocalBackend(path=cfg.local_path, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             verbatim=verbatim, batch_size=batch)
        b._tok, b._lm, b._pieces = shared._tok, shared._lm, shared._pieces  # one loaded model for all runs
        return b

    with tempfile.TemporaryDirectory() as tmp:
        for verbatim in [d == "verbatim" for d in args.decodings]:
            b = backend(verbatim, 1)
            for t, rs in reqs.items():
                t0 = time.perf_counter()
                answers, calls = llm.run_llm(rs, b, cache_dir=Path(tmp) / f"v{int(verbatim)}", progress=False,
                                             credentialed=False, concurrency=1)
                row = {"teacher": t, "decoding": "verbatim" if verbatim else "free",
                       **measure(ds, docs, answers, prof), "seconds": round(time.perf_counter() - t0, 1)}
                shared._pieces = b._pieces
                results["quality"].append(row)
                print(json.dumps(row), flush=True)
        batch = args.batch or max(4, cfg.local_batch_size)
        for size in () if args.no_throughput else (1, batch):
            b = backend(True, size)
            t0 = time.perf_counter()
            _, calls = llm.run_llm(reqs["llm_zero"], b, cache_dir=None, progress=False, credentialed=False,
                                   concurrency=size)
            wall = time.perf_counter() - t0
            row = {"batch_size": size, "requests": len(calls), "output_tokens": int(calls.output_tokens.sum()),
                   "seconds": round(wall, 2), "tokens_per_s": round(calls.output_tokens.sum() / wall, 2)}
            results["throughput"].append(row)
            print(json.dumps(row), flush=True)
    print(pd.DataFrame(results["quality"]).to_string(index=False))
    print(pd.DataFrame(results["throughput"]).to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
