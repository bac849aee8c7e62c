"""Benchmark: quote alignment speed and agreement against a straightforward difflib aligner.

    .venv/bin/python benchmarks/alignment.py [--notes 150] [--max-words 5000] [--quotes 10000]
                                             [--difflib-subset 800] [--seed 0]

Synthetic data (own generator): notes of clinical-ish vocabulary (Zipf-weighted words, sentences,
section headers, bullet and numbered lists, doses), up to ``--max-words`` words each; quotes of
four kinds: ``exact`` (raw copy of a note passage), ``perturbed`` (case, whitespace/line breaks,
punctuation and curly-quote/dash changes, 1-2 word substitutions on longer quotes), ``ellipsis``
(two passages of the note joined by "..." or "…") and ``hallucinated`` (random words, some
unknown to the note).

Reported: quotes per second of ``rationale_kit.rationales.alignment.align_quotes`` on all quotes (index
building included), the same for the difflib baseline on a random subset (difflib is too slow for
all), the speed ratio, agreement between the two on the subset (both aligned to overlapping
spans, or both unaligned), and per kind the share of quotes each aligner gets right (aligned
overlapping the true passage; unaligned for hallucinated quotes).

difflib baseline: per note one ``SequenceMatcher`` holding the lower-cased note (``autojunk`` off,
its index reused for every quote of the note); per quote the longest common block anchors a
window of the quote's length, accepted when ``SequenceMatcher.ratio`` of window vs quote >= 0.8.
"""
from __future__ import annotations

import argparse
import difflib
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rationale_kit.rationales.alignment import align_quotes, alignment_summary  # noqa: E402

CLINICAL = """patient history presents denies reports chest pain shortness breath fever cough nausea
vomiting diarrhea abdominal tenderness hypertension diabetes mellitus hyperlipidemia coronary artery
disease heart failure atrial fibrillation chronic kidney injury acute renal insufficiency pneumonia
sepsis urinary tract infection anemia thrombocytopenia edema bilateral lower extremity left right
ventricular ejection fraction echocardiogram catheterization stent placement troponin elevated
creatinine potassium sodium glucose insulin metformin lisinopril aspirin heparin warfarin
furosemide diuresis intubated extubated oxygen saturation nasal cannula ventilator tachycardia
bradycardia hypotension syncope stroke hemorrhage seizure altered mental status confusion delirium
dementia depression anxiety alcohol withdrawal cirrhosis ascites varices bleeding transfusion
fracture femur hip replacement surgery postoperative course uncomplicated discharged stable
condition follow outpatient clinic cardiology nephrology consult recommended continue started
stopped increased decreased dose daily twice tablet oral intravenous mg ml units wound cellulitis
abscess drainage culture positive negative blood cultures antibiotics vancomycin cefepime
ceftriaxone obstructive sleep apnea copd exacerbation asthma albuterol nebulizer steroids
prednisone hypothyroidism levothyroxine obesity morbid gout allopurinol neuropathy retinopathy
ulcer pressure sacral assessment plan examination unremarkable noted likely secondary due
without significant acute distress alert oriented""".split()
FUNCTION = "the of and with to in for on was is no a at by as has had from were be not".split()
SECTIONS = ["HISTORY OF PRESENT ILLNESS:", "PAST MEDICAL HISTORY:", "MEDICATIONS:", "ASSESSMENT AND PLAN:",
            "HOSPITAL COURSE:", "DISCHARGE DIAGNOSES:", "PHYSICAL EXAM:"]
PREFIX = "cardio nephro gastro hepato neuro pulmo derma osteo arthro myo hemo angio broncho".split()
SUFFIX = "itis opathy ectomy algia emia osis ogram plasty otomy oma".split()


def make_vocab(rng: random.Random) -> tuple[list[str], np.ndarray]:
    words = list(dict.fromkeys(CLINICAL + [p + s for p in PREFIX for s in SUFFIX]))
    rng.shuffle(words)
    words = FUNCTION + words
    weights = 1.0 / np.arange(1, len(words) + 1) ** 0.9  # Zipf-like
    return words, weights / weights.sum()


def make_note(rng: random.Random, nrng: np.random.Generator, vocab, probs, n_words: int) -> str:
    pool = list(nrng.choice(vocab, size=n_words, p=probs))  # exactly n_words words (+ doses)
    lines, used = [], 0
    while used < n_words:
        r = rng.random()
        if r < 0.08:
            lines.append("\n" + rng.choice(SECTIONS))
            continue
        words = pool[used:used + rng.randint(4, 18)]
        k = len(words)
        used += k
        if rng.random() < 0.2:
            words[rng.randrange(k)] = f"{rng.choice([5, 10, 20, 25, 40, 81, 500])}mg"
        if rng.random() < 0.3:
            words[rng.randrange(k)] += ","
        sent = " ".join(words)
        sent = sent[0].upper() + sent[1:] + "."
        if r < 0.2:
            sent = "- " + sent
        elif r < 0.28:
            sent = f"{rng.randint(1, 9)}. " + sent
        lines.append(sent)
    out, buf = [], []
    for line in lines:  # a few sentences per line, lists and headers on their own lines
        if line.startswith(("\n", "- ")) or re.match(r"\d\. ", line):
            if buf:
                out.append(" ".join(buf))
                buf = []
            out.append(line)
        else:
            buf.append(line)
            if rng.random() < 0.25:
                out.append(" ".join(buf))
                buf = []
    if buf:
        out.append(" ".join(buf))
    return "\n".join(out)


def passage(rng: random.Random, text: str, words: list[re.Match], lo: int, hi: int) -> tuple[str, int, int]:
    k = min(rng.randint(lo, hi), len(words))
    i = rng.randrange(len(words) - k + 1)
    s, e = words[i].start(), words[i + k - 1].end()
    return text[s:e], s, e


def perturb(rng: random.Random, q: str, vocab) -> str:
    toks = q.split()
    if len(toks) >= 8:
        for _ in range(rng.randint(1, 2)):
            toks[rng.randrange(len(toks))] = rng.choice(vocab)
    q = " ".join(toks)
    ops = rng.sample(["upper", "lower", "title", "space", "newline", "punct", "curly", "period"], 3)
    for op in ops:
        if op == "upper":
            q = q.upper()
        elif op == "lower":
            q = q.lower()
        elif op == "title":
            q = q.title()
        elif op == "space":
            q = q.replace(" ", "  ", 2)
        elif op == "newline":
            q = q.replace(" ", "\n", 1)
        elif op == "punct":
            q = q.replace(",", "").replace(".", "")
        elif op == "curly":
            q = "\u201c" + q.replace("-", "\u2013") + "\u201d"
        elif op == "period":
            q = q + "."
    return q


def make_data(n_notes: int, max_words: int, n_quotes: int, seed: int):
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab, probs = make_vocab(rng)
    sizes = [rng.randint(max(50, max_words // 15), max_words) for _ in range(n_notes)]
    texts = [make_note(rng, nrng, vocab, probs, n) for n in sizes]
    docs = pd.DataFrame({"note_id": [f"note{i:03d}" for i in range(n_notes)], "text": texts, "n_words": sizes})
    word_pos = [list(re.finditer(r"\S+", t)) for t in texts]
    rows, truth = [], []
    for j in range(n_quotes):
        i = rng.randrange(n_notes)
        text, words = texts[i], word_pos[i]
        r = rng.random()
        if r < 0.35:
            kind = "exact"
            q, s, e = passage(rng, text, words, 3, 25)
            spans = [(s, e)]
        elif r < 0.65:
            kind = "perturbed"
            q, s, e = passage(rng, text, words, 3, 25)
            q, spans = perturb(rng, q, vocab), [(s, e)]
        elif r < 0.80:
            kind = "ellipsis"
            q1, s1, e1 = passage(rng, text, words, 3, 10)
            q2, s2, e2 = passage(rng, text, words, 3, 10)
            q, spans = q1 + rng.choice([" ... ", "... ", " \u2026 "]) + q2, [(s1, e1), (s2, e2)]
        else:
            kind = "hallucinated"
            k = rng.randint(4, 15)
            q = " ".join(rng.choice(vocab) if rng.random() < 0.6 else f"xq{rng.randint(0, 999)}" for _ in range(k))
            spans = []
        rows.append({"note_id": docs.note_id[i], "code": f"C{j % 50:02d}", "quote": q, "kind": kind})
        truth.append(spans)
    return docs, pd.DataFrame(rows), truth


class DifflibAligner:
    """The straightforward baseline (see module docstring)."""

    def __init__(self, text: str, min_ratio: float = 0.8):
        self.text, self.low, self.min_ratio = text, text.lower(), min_ratio
        self.sm = difflib.SequenceMatcher(None, autojunk=False)
        self.sm.set_seq2(self.low)

    def align(self, quote: str) -> list[tuple[int, int]]:
        q = " ".join(quote.lower().split())
        if not q:
            return []
        self.sm.set_seq1(q)
        i, j, size = self.sm.find_longest_match(0, len(q), 0, len(self.low))
        if size == 0:
            return []
        s = max(0, j - i)
        e = min(len(self.low), s + len(q))
        ratio = difflib.SequenceMatcher(None, q, self.low[s:e], autojunk=False).ratio()
        return [(s, e)] if ratio >= self.min_ratio else []


def overlaps(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(s < e2 and s2 < e for s, e in a for s2, e2 in b)


def correct(found: list[tuple[int, int]], true: list[tuple[int, int]]) -> bool:
    return (not found) if not true else overlaps(found, true)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=150)
    ap.add_argument("--max-words", type=int, default=5000)
    ap.add_argument("--quotes", type=int, default=10000)
    ap.add_argument("--difflib-subset", type=int, default=800)
    ap.add_argument("--threshold", type=float, default=1.7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    docs, quotes, truth = make_data(args.notes, args.max_words, args.quotes, args.seed)
    n_words = docs.n_words  # body words, without section headers and list markers
    print(f"data: {len(docs)} notes ({n_words.min()}-{n_words.max()} words, mean {n_words.mean():.0f}), "
          f"{len(quotes)} quotes {quotes.kind.value_counts().to_dict()} [{time.perf_counter() - t0:.1f}s]")

    t0, c0 = time.perf_counter(), time.process_time()
    frame = align_quotes(docs, quotes, threshold=args.threshold)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    ours: list[list[tuple[int, int]]] = [[] for _ in range(len(quotes))]
    ok = frame[frame.start.notna()]
    for qr, s, e in zip(ok.quote_row, ok.start, ok.end):
        ours[qr].append((int(s), int(e)))

    rng = random.Random(args.seed + 1)
    subset = sorted(rng.sample(range(len(quotes)), min(args.difflib_subset, len(quotes))))
    texts = dict(zip(docs.note_id, docs.text))
    t0, c0 = time.perf_counter(), time.process_time()
    baselines: dict[str, DifflibAligner] = {}
    theirs = {}
    for qi in subset:
        nid = quotes.note_id[qi]
        al = baselines.get(nid) or baselines.setdefault(nid, DifflibAligner(texts[nid]))
        theirs[qi] = al.align(quotes.quote[qi])
    t_diff, c_diff = time.perf_counter() - t0, time.process_time() - c0

    qps_ours, cqps_ours = len(quotes) / t_ours, len(quotes) / c_ours
    qps_diff, cqps_diff = len(subset) / t_diff, len(subset) / c_diff
    both_overlap = sum(bool(ours[q]) and bool(theirs[q]) and overlaps(ours[q], theirs[q]) for q in subset)
    both_none = sum(not ours[q] and not theirs[q] for q in subset)
    agree = (both_overlap + both_none) / len(subset)

    print()
    print(f"{'aligner':<24}{'quotes':>7}{'wall s':>8}{'cpu s':>8}{'quotes/s':>10}{'q/cpu-s':>9}{'aligned':>9}{'correct':>9}")
    corr_ours = np.mean([correct(ours[q], truth[q]) for q in range(len(quotes))])
    corr_ours_sub = np.mean([correct(ours[q], truth[q]) for q in subset])
    corr_diff = np.mean([correct(theirs[q], truth[q]) for q in subset])
    print(f"{'rationale_kit (all)':<24}{len(quotes):>7}{t_ours:>8.2f}{c_ours:>8.2f}{qps_ours:>10.0f}{cqps_ours:>9.0f}"
          f"{np.mean([bool(x) for x in ours]):>9.1%}{corr_ours:>9.1%}")
    print(f"{'rationale_kit (subset)':<24}{len(subset):>7}{'':>8}{'':>8}{'':>10}{'':>9}"
          f"{np.mean([bool(ours[q]) for q in subset]):>9.1%}{corr_ours_sub:>9.1%}")
    print(f"{'difflib (subset)':<24}{len(subset):>7}{t_diff:>8.2f}{c_diff:>8.2f}{qps_diff:>10.1f}{cqps_diff:>9.1f}"
          f"{np.mean([bool(theirs[q]) for q in subset]):>9.1%}{corr_diff:>9.1%}")
    print()
    print(f"speed ratio, ours / difflib: {qps_ours / qps_diff:.0f}x in quotes per wall second, "
          f"{cqps_ours / cqps_diff:.0f}x per CPU second (the machine may be shared; CPU time is steadier)")
    print(f"agreement on the subset of {len(subset)} quotes: {agree:.1%} "
          f"(both overlapping {both_overlap}, both unaligned {both_none}, disagree {len(subset) - both_overlap - both_none})")
    print()
    print(f"{'kind':<14}{'n (all)':>8}{'ours correct':>14}{'n (subset)':>12}{'ours':>8}{'difflib':>9}")
    for kind in ["exact", "perturbed", "ellipsis", "hallucinated"]:
        idx = [q for q in range(len(quotes)) if quotes.kind[q] == kind]
        sub = [q for q in subset if quotes.kind[q] == kind]
        c_all = np.mean([correct(ours[q], truth[q]) for q in idx]) if idx else float("nan")
        c_sub = np.mean([correct(ours[q], truth[q]) for q in sub]) if sub else float("nan")
        c_dif = np.mean([correct(theirs[q], truth[q]) for q in sub]) if sub else float("nan")
        print(f"{kind:<14}{len(idx):>8}{c_all:>14.1%}{len(sub):>12}{c_sub:>8.1%}{c_dif:>9.1%}")
    s = alignment_summary(frame)
    print()
    print("ours by method: " + ", ".join(f"{m} {v['share']:.1%}" for m, v in s["by_method"].items())
          + f"; unaligned {s['unaligned_rate']:.1%} "
          + "(" + ", ".join(f"{r} {v['quotes']}" for r, v in s["unaligned_by_reason"].items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
