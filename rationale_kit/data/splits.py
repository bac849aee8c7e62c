"""Splits and label-space choices applied to loaded data: the patient-level split, the few-shot
pool, and the restriction to the most frequent codes (``data.top_codes``)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
import pandas as pd

from rationale_kit.core.records import DataError
from rationale_kit.data.dataset import SPLITS, Dataset, codes_table, split_counts


def patient_split(subjects: Iterable[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """Deterministic patient-level split: sorted unique ids, seeded permutation, first 80% train,
    next 10% val, rest test. Returns ``subject -> split``."""
    unique = sorted(set(subjects))
    perm = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    out = {}
    for rank, idx in enumerate(perm):
        out[unique[idx]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def mark_fewshot(docs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Reserve ``n`` annotated training documents (seeded choice) as the few-shot pool."""
    docs = docs.copy()
    pool = sorted(docs.loc[docs["annotated"] & (docs["split"] == "train"), "note_id"])
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()) if pool and n > 0 else set()
    docs["fewshot"] = docs["note_id"].isin(chosen)
    return docs


def restrict_top_codes(ds: Dataset, n: int) -> Dataset:
    """``ds`` restricted to the ``n`` codes carried by the most training documents (ties broken by
    code): other codes leave every document's ``codes`` and their spans are removed. Documents are
    kept even when no code is left (negatives for every label); annotated / few-shot documents
    left without spans lose those flags. ``report["top codes"]`` counts what was removed, per split."""
    if n < 1:
        raise DataError(f"data.top_codes must be at least 1, got {n}")
    docs = ds.docs.copy()
    counts = Counter(c for cs, s in zip(docs["codes"], docs["split"]) if s == "train" for c in set(cs))
    keep = set(sorted(counts, key=lambda c: (-counts[c], c))[:n])
    before = {s: int(sum(len(cs) for cs, sp in zip(docs["codes"], docs["split"]) if sp == s)) for s in SPLITS}
    docs["codes"] = [[c for c in cs if c in keep] for cs in docs["codes"]]
    after = {s: int(sum(len(cs) for cs, sp in zip(docs["codes"], docs["split"]) if sp == s)) for s in SPLITS}
    spans = ds.spans[ds.spans["code"].isin(keep)].reset_index(drop=True)
    with_spans = set(spans["note_id"])
    lost_ann = docs["annotated"] & ~docs["note_id"].isin(with_spans)
    lost_few = docs["fewshot"] & ~docs["note_id"].isin(with_spans)
    docs["annotated"] = docs["annotated"] & ~lost_ann
    docs["fewshot"] = docs["fewshot"] & ~lost_few
    report = dict(ds.report)
    report["top codes"] = {
        "rule": f"the {len(keep)} codes on the most training documents (of {len(counts)} training codes); "
                "other codes removed from every split with their spans",
        **{f"{s} gold code occurrences removed": f"{before[s] - after[s]} of {before[s]} "
                                                  f"({(before[s] - after[s]) / before[s]:.1%})" if before[s] else "0 of 0"
           for s in SPLITS},
        "spans removed": int(len(ds.spans) - len(spans)),
        "documents left without codes (kept as negatives)": int(sum(not cs for cs in docs["codes"])),
        "annotated documents left without spans (no longer annotated)": int(lost_ann.sum()),
        "few-shot documents left without spans (no longer in the pool)": int(lost_few.sum()),
    }
    report["splits"] = split_counts(docs, spans)
    descs = dict(zip(ds.codes["code"], ds.codes["description"]))
    return Dataset(ds.name, docs, spans, codes_table(docs, descriptions=descs), report)
