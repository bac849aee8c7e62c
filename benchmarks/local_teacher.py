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

``--prompt-cut``: instead, the prompts before and after the cut, on the same notes, side by side
(docs/method/llm.md): "before" is the prompt code of ``--before-rev`` (few-shot examples as
excerpts of up to 800 characters around the spans, the prompt read in one pass); "after" is this
checkout's (each example span with ``rationales.llm.example_context_chars`` characters of context,
``--context`` to try others), read without and with the shared-prefix cache. Per teacher and
variant: prompt tokens per call, tokens taken from the prefix cache, seconds per call reading the
prompt (prefill) and decoding, the share of quotes aligned to the note, and the aligned spans'
PI-token F1 and span IoU-F1 against the human spans (pairs with human spans). The answers without
and with the prefix cache must be identical (checked, exit 1 otherwise)::

    nice -n 10 python benchmarks/local_teacher.py --prompt-cut [--json out.json]

``--dtypes float32 bfloat16``: instead, the profile's own requests (both teachers, verbatim
decoding, prefix cache on) answered by the model loaded in each dtype
(``rationales.llm.local_dtype``), side by side in one run: seconds per call reading the prompt and
decoding (wall) and the process CPU seconds, the same quality columns as ``--prompt-cut``, and how
many answers are identical to the first dtype's::

    nice -n 10 python benchmarks/local_teacher.py --dtypes float32 bfloat16 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from rationale_kit.rationales import alignment, llm
from rationale_kit.core import config
from rationale_kit import data
from rationale_kit.workbook.protocols.data import eval_docs, teacher_notes  # noqa: E402
from rationale_kit.workbook.protocols.rationales import llm_requests  # noqa: E402
from rationale_kit.metrics.plausibility import mdace_measures, span_iou_f1  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the last commit with the prompts before the cut (examples as excerpts, one-pass prefill)
BEFORE_REV = "719b9d7"


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


def _prompting_at(rev: str) -> types.ModuleType:
    """``rationale_kit.rationales.llm.prompting`` as it was at commit ``rev`` (prompt files of this
    checkout: the cut did not change them)."""
    rel = "rationale_kit/rationales/llm/prompting.py"
    src = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    name = f"_prompting_{rev}"
    mod = types.ModuleType(name)
    mod.__file__ = str(ROOT / rel)
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:{rel}", "exec"), mod.__dict__)
    return mod


def before_requests(old: types.ModuleType, ds, docs, shots: int, prof) -> list:
    """:func:`llm_requests` with the prompt code of ``old`` (examples with its default excerpts)."""
    desc = dict(zip(ds.codes.code, ds.codes.description))
    examples = []
    if shots > 0:
        pool = ds.docs[ds.docs.fewshot]
        codes = sorted({c for cs in docs.codes for c in cs})
        examples = old.select_examples(pool, ds.spans[ds.spans.note_id.isin(pool.note_id)], codes, shots,
                                       seed=prof.common.seed, exclude=set(eval_docs(ds.docs).note_id) | set(docs.note_id),
                                       descriptions=desc)
    reqs = old.make_requests(docs, desc, examples, version=prof.rationales.llm.prompt_version,
                             max_note_chars=prof.rationales.llm.max_note_chars)
    return [llm.LLMRequest(r.note_id, llm.Prompt(system=r.prompt.system, user=r.prompt.user, version=r.prompt.version,
                                                 sha=r.prompt.sha, codes=r.prompt.codes, note=r.prompt.note), r.codes)
            for r in reqs]  # shared_user_chars 0: the prompt read in one pass, as before


def quality(ds, docs, answers, prof) -> dict:
    """Quotes, the share aligned to the note, and the aligned spans' PI-token F1 and span IoU-F1
    against the human spans, on every (note, gold code) pair asked that has human spans."""
    pairs = {(n, c) for n, cs in zip(docs.note_id, docs.codes) for c in cs}
    ok = answers[answers.status == "ok"]
    aligned = alignment.align_quotes(docs, ok[["note_id", "code", "quote"]].reset_index(drop=True),
                                     threshold=prof.alignment.threshold, occurrences=prof.alignment.occurrences)
    spans = alignment.aligned_to_spans(aligned, "llm")
    n_aligned = int(aligned[aligned.start.notna()].quote_row.nunique()) if len(aligned) else 0
    gold = ds.spans[ds.spans.note_id.isin(set(docs.note_id))]
    gold = gold[[(n, c) in pairs for n, c in zip(gold.note_id, gold.code)]]
    pi = mdace_measures(gold, spans, docs, pairs="gold")["token_position_independent"]["f1"] if len(gold) else None
    iou = span_iou_f1(gold, spans, docs, pairs="gold")["f1"] if len(gold) else None
    return {"quotes": int(len(ok)), "aligned_share": round(n_aligned / max(1, len(ok)), 3),
            "gold_pairs": int(gold[["note_id", "code"]].drop_duplicates().shape[0]),
            "pi_token_f1": None if pi is None else round(float(pi), 4),
            "span_iou_f1": None if iou is None else round(float(iou), 4)}


def prompt_cut(ds, docs, prof, shared, args) -> dict:
    """The before/after table of ``--prompt-cut`` (see the module doc) and the exactness check."""
    cfg = prof.rationales.llm
    old = _prompting_at(args.before_rev)
    contexts = args.context or [cfg.example_context_chars]
    rows, same = [], []
    for teacher, shots in {"llm_few": cfg.shots_per_code, "llm_zero": 0}.items():
        # zero-shot prompts are the same before and after the cut (same sha): no "before" row
        variants = [("before", None, before_requests(old, ds, docs, shots, prof), False)] if shots else []
        for w in contexts if shots else contexts[:1]:
            p = prof if w == cfg.example_context_chars else config.load_profile(
                args.profile, {"rationales": {"llm": {"example_context_chars": w}}})
            reqs = llm_requests(ds, docs, shots, p)
            # the prefix cache off and on: same answers (checked); few-shot off only with --exact-few
            variants += [("after", w, reqs, c) for c in ((True,) if shots and not args.exact_few else (False, True))]
        texts = {}
        for name, w, reqs, cached in variants:
            b = llm.LocalBackend(path=cfg.local_path, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 prefix_cache=cached)
            b._tok, b._lm, b._pieces = shared._tok, shared._lm, shared._pieces
            t0 = time.perf_counter()
            answers, calls = llm.run_llm(reqs, b, cache_dir=None, progress=False, credentialed=False, concurrency=1)
            wall = time.perf_counter() - t0
            shared._pieces = b._pieces
            st = pd.DataFrame(b.stats)
            texts[(name, w, cached)] = ([tuple(answers[answers.note_id == r.note_id].quote) for r in reqs],
                                        list(st.output_tokens) if len(st) else [])
            n = max(1, len(st))
            row = {"teacher": teacher, "prompts": name, "context": "-" if shots == 0 else ("excerpt" if w is None else w),
                   "prefix_cache": cached, "calls": len(st), "prompt_tokens": round(st.prompt_tokens.mean(), 1),
                   "cached_tokens": round((st.prefix_tokens * st.prefix_reused).mean(), 1),
                   "prefill_s": round((st.prefix_s + st.prefill_s).sum() / n, 2), "decode_s": round(st.decode_s.sum() / n, 2),
                   "output_tokens": round(st.output_tokens.mean(), 1), "seconds": round(wall, 1),
                   **quality(ds, docs, answers, prof)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if cached and (name, w, False) in texts:
                same.append({"teacher": teacher, "context": w, "requests": len(reqs),
                             "identical": sum(a == c for a, c in zip(texts[(name, w, False)][0], texts[(name, w, True)][0])),
                             "same_output_tokens": texts[(name, w, False)][1] == texts[(name, w, True)][1]})
    return {"rows": rows, "prefix_cache_exact": same}


def dtype_compare(ds, docs, prof, args) -> dict:
    """The table of ``--dtypes`` (see the module doc)."""
    cfg = prof.rationales.llm
    teachers = {"llm_zero": 0, "llm_few": cfg.shots_per_code}
    reqs = {t: llm_requests(ds, docs, k, prof) for t, k in teachers.items()}
    rows, first = [], {}
    for dtype in args.dtypes:
        b = llm.LocalBackend(path=cfg.local_path, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             dtype=dtype).load()
        for teacher, rs in reqs.items():
            b.stats.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            answers, _ = llm.run_llm(rs, b, cache_dir=None, progress=False, credentialed=False, concurrency=1)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            st = pd.DataFrame(b.stats)
            n = max(1, len(st))
            got = [tuple(answers[answers.note_id == r.note_id].quote) for r in rs]
            first.setdefault(teacher, got)
            row = {"dtype": dtype, "teacher": teacher, "calls": len(st),
                   "prompt_tokens": round(st.prompt_tokens.mean(), 1) if len(st) else 0,
                   "prefill_s": round((st.prefix_s + st.prefill_s).sum() / n, 2) if len(st) else 0,
                   "decode_s": round(st.decode_s.sum() / n, 2) if len(st) else 0,
                   "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                   "same_answers_as_first": sum(a == c for a, c in zip(first[teacher], got)),
                   **quality(ds, docs, answers, prof)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del b
    return {"rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--decodings", nargs="+", choices=["free", "verbatim"], default=["free", "verbatim"])
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--prompt-cut", action="store_true", help="the prompts before/after the cut instead (module doc)")
    ap.add_argument("--before-rev", default=BEFORE_REV, help=f"commit of the prompts before the cut (default {BEFORE_REV})")
    ap.add_argument("--exact-few", action="store_true", help="--prompt-cut: also the few-shot prompts without the prefix cache")
    ap.add_argument("--max-notes", type=int, default=None, help="the first N of the teacher notes only")
    ap.add_argument("--context", type=int, nargs="+", default=None,
                    help="example_context_chars values to try (default: the profile's)")
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=None,
                    help="the model in each dtype instead (module doc)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    prof = config.load_profile(args.profile)
    cfg = prof.rationales.llm
    ds = data.load_dataset(prof)
    docs = teacher_docs(ds, prof)
    docs = docs.head(args.max_notes) if args.max_notes else docs
    teachers = {"llm_zero": 0, "llm_few": cfg.shots_per_code}
    if args.dtypes:
        res = {"profile": prof.name, "notes": len(docs), "threads": args.threads, **dtype_compare(ds, docs, prof, args)}
        print(pd.DataFrame(res["rows"]).to_string(index=False))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1), encoding="utf-8")
        return 0
    reqs = {t: llm_requests(ds, docs, k, prof) for t, k in teachers.items()}
    shared = llm.LocalBackend(path=cfg.local_path, max_new_tokens=cfg.max_new_tokens).load()
    if args.prompt_cut:
        cut = {"profile": prof.name, "notes": len(docs), "threads": args.threads, **prompt_cut(ds, docs, prof, shared, args)}
        print(pd.DataFrame(cut["rows"]).to_string(index=False))
        print(pd.DataFrame(cut["prefix_cache_exact"]).to_string(index=False))
        if args.json:
            Path(args.json).write_text(json.dumps(cut, indent=1), encoding="utf-8")
        return 0 if all(r["identical"] == r["requests"] and r["same_output_tokens"]
                        for r in cut["prefix_cache_exact"]) else 1
    results: dict = {"profile": prof.name, "notes": len(docs), "quality": [], "throughput": []}

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
