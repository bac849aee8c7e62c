"""Rationales in the one representation, and model rationales (attention, gradients).

A rationale for a (note, code) pair is either

- *discrete*: character spans on the raw note (entity links, LLM quotes, NER tags), a long table
  with :data:`records.SPAN_COLUMNS` plus ``method`` and ``model``; or
- *soft*: one score per unit of some tokenizer together with the unit's character offsets
  (attention, gradients), a long table with :data:`records.SCORE_COLUMNS`.

Both are saved to parquet (:func:`save_table` / :func:`load_table`) and converted to unit masks of
any tokenizer through character offsets (:func:`to_token_mask`, :func:`to_word_units`).

Model rationales follow the coding-model contract of ``docs/INTERFACES.md``: one forward per
batch of notes with ``label_idx`` = the requested codes' rows; attention row ``k`` of note ``b``
over its ``n`` units (positions ``0..n-1`` are the units of the ``Encoded``) is the rationale.

Gradient explainers (no captum; plain ``torch.autograd``), on the embeddings from
``model.embed``, run through ``model.forward_from_embeddings``; all codes of a note (in chunks of
``code_batch``) share one backward pass: the embeddings are repeated once per code and the sum of
the diagonal logits (copy ``k``, code ``k``) is differentiated, so copy ``k`` receives exactly
d logit_k / d embeddings.

- ``input_x_gradient``: ``|sum_e x_te * d logit / d x_te|`` per unit ``t``.
- ``integrated_gradients``: baseline = the embeddings of ``mask_id`` at every real unit (padding
  kept); attribution ``(x - x') . integral_0^1 grad(x' + a (x - x')) da`` with ``steps``-point
  Gauss-Legendre quadrature. Completeness: the attributions of a pair sum to
  ``logit(x) - logit(x')`` up to the quadrature error; :func:`gradient_rationales` reports
  both sides per pair (``diagnostics``), the tests require agreement within 1 %.
  Table scores are ``|attribution|`` unless ``absolute=False`` (signed).
- ``attention_x_gradient``: attention weight of the unit for the code times the L2 norm of
  d logit / d x_t.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core import text as _text
from rationale_kit.core.config import DEFAULT_GRADIENT_METHOD
from rationale_kit.core.records import SCORE_COLUMNS, SPAN_COLUMNS, DataError, Document, Span, read_spans_jsonl, write_spans_jsonl

#: Extra columns of a discrete rationale table (after SPAN_COLUMNS).
DISCRETE_EXTRA = ["method", "model"]
DISCRETE_COLUMNS = SPAN_COLUMNS + DISCRETE_EXTRA

GradientMethod = Literal["attention_x_gradient", "input_x_gradient", "integrated_gradients"]


class SoftResult(NamedTuple):
    """What the model-rationale functions return.

    ``table``: soft rationale table (SCORE_COLUMNS). ``n_missing``: requested (note, code) pairs
    whose code is not among ``model.labels`` (warned about, not silently dropped); ``missing``:
    those pairs. ``diagnostics``: per-pair extras (integrated gradients: completeness check).
    """

    table: pd.DataFrame
    n_missing: int
    missing: pd.DataFrame
    diagnostics: Optional[pd.DataFrame] = None


# --------------------------------------------------------------------------------------------
# documents
# --------------------------------------------------------------------------------------------
def doc_texts(docs) -> dict[str, str]:
    """``{note_id: text}`` from a documents table, a list of :class:`Document` or a mapping."""
    if isinstance(docs, pd.DataFrame):
        if not {"note_id", "text"} <= set(docs.columns):
            raise DataError("documents table needs columns note_id and text")
        return {str(k): str(v) for k, v in zip(docs["note_id"], docs["text"])}
    if isinstance(docs, Mapping):
        return {str(k): str(v) for k, v in docs.items()}
    out = {}
    for d in docs:
        if isinstance(d, Document):
            out[d.note_id] = d.text
        else:
            raise DataError(f"expected Document objects, got {type(d).__name__}")
    return out


def _doc_codes(docs) -> dict[str, list[str]]:
    if isinstance(docs, pd.DataFrame):
        if "codes" not in docs.columns:
            raise DataError("documents table needs a codes column for gold codes")
        return {str(n): [str(c) for c in cs] for n, cs in zip(docs["note_id"], docs["codes"])}
    return {d.note_id: list(d.codes) for d in docs}


# --------------------------------------------------------------------------------------------
# spans <-> units
# --------------------------------------------------------------------------------------------
def _span_list(spans) -> list[tuple[int, int]]:
    if spans is None:
        return []
    if isinstance(spans, pd.DataFrame):
        return [(int(s), int(e)) for s, e in zip(spans["start"], spans["end"])]
    out = []
    for s in spans:
        if isinstance(s, Span):
            out.append((s.start, s.end))
        else:
            a, b = s
            out.append((int(a), int(b)))
    return out


def to_token_mask(spans, text: str, offsets) -> np.ndarray:
    """Boolean mask ``[n]`` over any tokenizer's units: unit ``i`` (characters
    ``offsets[i, 0]:offsets[i, 1]`` of ``text``) is selected when it overlaps a span by at least
    one character. ``spans``: ``(start, end)`` pairs, :class:`Span` objects or a span table (all
    rows are used: filter it to one note and code first). Raises :class:`DataError` for a span or
    unit outside ``text``."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    pairs = _span_list(spans)
    for s, e in pairs:
        if not (0 <= s < e <= len(text)):
            raise DataError(f"span [{s}, {e}) outside a text of length {len(text)}")
    if len(offsets) and (offsets.min() < 0 or offsets.max() > len(text)):
        raise DataError(f"unit offsets outside a text of length {len(text)}")
    return _text.span_mask(offsets, pairs)


def to_word_units(
    text: str,
    spans=None,
    *,
    offsets=None,
    scores=None,
    reduce: Literal["sum", "max", "mean"] = "sum",
    max_number: int = 10,
) -> pd.DataFrame:
    """MDACE word units (:func:`text.mdace_tokens`: ``\\w+`` on lower-cased text, numbers above
    ``max_number`` dropped) with one value each.

    With ``spans``: value 1.0 for words overlapping a span, else 0.0. With ``offsets`` and
    ``scores`` (a soft rationale on another tokenizer's units): each word gets the ``reduce`` of
    the scores of the units that overlap it (``sum`` keeps the mass of word pieces), 0.0 when
    none does. Returns columns ``unit, start, end, token, value``.
    """
    toks = _text.mdace_tokens(text, max_number=max_number)
    woff = np.asarray([(s, e) for s, e, _ in toks], dtype=np.int64).reshape(-1, 2)
    if (spans is None) == (scores is None):
        raise ValueError("to_word_units: give either spans or offsets+scores")
    if spans is not None:
        values = to_token_mask(spans, text, woff).astype(np.float64)
    else:
        uoff = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(sc) != len(uoff):
            raise ValueError(f"{len(sc)} scores for {len(uoff)} units")
        values = _project_scores(woff, uoff, sc, reduce)
    return pd.DataFrame(
        {
            "unit": np.arange(len(toks), dtype=np.int64),
            "start": woff[:, 0],
            "end": woff[:, 1],
            "token": [t for _, _, t in toks],
            "value": values,
        }
    )


def _project_scores(woff: np.ndarray, uoff: np.ndarray, sc: np.ndarray, reduce: str) -> np.ndarray:
    """Scores of units projected on (sorted, disjoint) words: each word gets the ``reduce`` of
    the scores of the units that overlap it by at least one character."""
    values = np.zeros(len(woff), dtype=np.float64)
    if len(woff) == 0 or len(uoff) == 0:
        return values
    keep = uoff[:, 1] > uoff[:, 0]
    us, ue, usc = uoff[keep, 0], uoff[keep, 1], sc[keep]
    lo = np.searchsorted(woff[:, 1], us, side="right")  # first word ending after the unit start
    hi = np.searchsorted(woff[:, 0], ue, side="left")  # words starting before the unit end
    length = np.clip(hi - lo, 0, None)
    unit_idx = np.repeat(np.arange(len(us)), length)
    word_idx = np.repeat(lo, length) + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length))
    vals = usc[unit_idx]
    if reduce == "sum":
        np.add.at(values, word_idx, vals)
    elif reduce == "max":
        values[:] = -np.inf
        np.maximum.at(values, word_idx, vals)
        values[np.isneginf(values)] = 0.0
    elif reduce == "mean":
        counts = np.zeros(len(woff))
        np.add.at(values, word_idx, vals)
        np.add.at(counts, word_idx, 1.0)
        values = np.divide(values, counts, out=np.zeros_like(values), where=counts > 0)
    else:
        raise ValueError(f"reduce must be sum, max or mean, got {reduce!r}")
    return values


def word_unit_scores(table: pd.DataFrame, docs, reduce: Literal["sum", "max", "mean"] = "sum",
                     max_number: int = 10, renormalize: bool = False) -> pd.DataFrame:
    """A soft table re-expressed on MDACE word units (so models with different tokenizers can be
    compared); ``source``, ``method``, ``model`` kept, ``unit`` = word index. Score on units that
    overlap no MDACE word (punctuation pieces, numbers above ``max_number``) is dropped, so a
    pair's word scores may sum to less than its unit scores; ``renormalize`` rescales each pair's
    word scores to sum 1 (when positive)."""
    _check_columns(table, SCORE_COLUMNS, "soft rationale table")
    texts = doc_texts(docs)
    parts = []
    keys = ["note_id", "code", "source", "method", "model"]
    for key, g in table.groupby(keys, sort=False, dropna=False):
        w = to_word_units(texts[key[0]], offsets=g[["start", "end"]].to_numpy(),
                          scores=g["score"].to_numpy(), reduce=reduce, max_number=max_number)
        values = w["value"].to_numpy()
        if renormalize and values.sum() > 0:
            values = values / values.sum()
        parts.append(pd.DataFrame({k: v for k, v in zip(keys, key)} | {
            "unit": w["unit"], "start": w["start"], "end": w["end"], "score": values}))
    return _soft_frame(parts)


def soft_to_spans(
    scores: pd.DataFrame,
    topk: Optional[int] = None,
    threshold: Optional[float] = None,
) -> pd.DataFrame:
    """Binarise a soft table into spans.

    Per (note, code, source, method, model): ``topk`` keeps the ``k`` highest-scoring units (ties
    broken by position); ``threshold`` keeps units whose score, normalised to sum 1 over the pair
    (negative scores clipped to 0 first), is above ``threshold``. Runs of consecutive selected
    units (by ``unit`` index) are merged into one span from the first unit's start to the last
    unit's end. Output: DISCRETE_COLUMNS + ``score`` (normalised mass of the span),
    ``soft_method`` (the soft table's method) and ``param`` (k or the threshold); ``source`` is
    kept, ``method`` is ``"topk"`` or ``"threshold"``.
    """
    if (topk is None) == (threshold is None):
        raise ValueError("soft_to_spans: give exactly one of topk and threshold")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    _check_columns(scores, SCORE_COLUMNS, "soft rationale table")
    method = "topk" if topk is not None else "threshold"
    param = float(topk if topk is not None else threshold)
    rows = []
    keys = ["note_id", "code", "source", "method", "model"]
    for (nid, code, source, smethod, model), g in scores.groupby(keys, sort=False, dropna=False):
        g = g.sort_values("unit", kind="stable")
        units = g["unit"].to_numpy()
        sc = g["score"].to_numpy(dtype=np.float64)
        pos = np.clip(sc, 0.0, None)
        total = pos.sum()
        norm = pos / total if total > 0 else np.zeros_like(pos)
        if topk is not None:
            order = np.lexsort((units, -sc))  # by score desc, then position
            sel = np.zeros(len(g), dtype=bool)
            sel[order[:topk]] = True
        else:
            sel = norm > threshold
        starts, ends = g["start"].to_numpy(), g["end"].to_numpy()
        idx = np.flatnonzero(sel)
        run: list[int] = []
        for k in list(idx) + [None]:
            if k is not None and run and units[k] == units[run[-1]] + 1:
                run.append(k)
                continue
            if run:
                rows.append(
                    {
                        "note_id": nid, "code": code, "start": int(starts[run].min()),
                        "end": int(ends[run].max()), "granularity": "", "source": source,
                        "method": method, "model": model, "score": float(norm[run].sum()),
                        "soft_method": smethod, "param": param,
                    }
                )
            run = [k] if k is not None else []
    cols = DISCRETE_COLUMNS + ["score", "soft_method", "param"]
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({"start": "int64", "end": "int64", "score": "float64", "param": "float64"})


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------
def spans_to_jsonl(spans: pd.DataFrame, path: str | Path, docs: Optional[pd.DataFrame] = None) -> None:
    """:func:`records.write_spans_jsonl`, keeping extra columns (``method``, ``model``...) as
    extra keys of each line."""
    write_spans_jsonl(spans, path, docs)
    extra = [c for c in spans.columns if c not in SPAN_COLUMNS]
    if not extra:
        return
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    recs = spans[extra].to_dict("records")
    with open(path, "w", encoding="utf-8") as fh:
        for line, ex in zip(lines, recs):
            rec = json.loads(line)
            for k, v in ex.items():
                rec[k] = v.item() if isinstance(v, np.generic) else v
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def spans_from_jsonl(path: str | Path, docs: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """:func:`records.read_spans_jsonl` (offsets and covered text checked against ``docs``), with
    the extra keys of :func:`spans_to_jsonl` restored as columns (``text`` excepted)."""
    frame = read_spans_jsonl(path, docs)
    extras: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                extras.append({k: v for k, v in rec.items() if k not in SPAN_COLUMNS and k != "text"})
    if any(extras):
        frame = pd.concat([frame, pd.DataFrame(extras, index=frame.index)], axis=1)
    return frame


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; have {list(frame.columns)}")


def table_kind(frame: pd.DataFrame) -> str:
    """``"soft"`` for a SCORE_COLUMNS table, ``"spans"`` for a SPAN_COLUMNS one."""
    cols = set(frame.columns)
    if set(SCORE_COLUMNS) <= cols:
        return "soft"
    if set(SPAN_COLUMNS) <= cols:
        return "spans"
    raise DataError(
        f"not a rationale table: need the span columns {SPAN_COLUMNS} or the soft columns "
        f"{SCORE_COLUMNS}; missing {sorted(set(SPAN_COLUMNS) - cols)} / {sorted(set(SCORE_COLUMNS) - cols)}"
    )


_DTYPES = {"start": "int64", "end": "int64", "unit": "int64", "score": "float64"}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({k: v for k, v in _DTYPES.items() if k in frame.columns})
    for c in ("note_id", "code", "source", "method", "model", "granularity"):
        if c in frame.columns:
            frame[c] = frame[c].astype(str)
    return frame


def save_table(frame: pd.DataFrame, path: str | Path, kind: Optional[str] = None) -> Path:
    """Write a span or soft table to parquet after checking its columns (``kind``: ``"spans"``,
    ``"soft"`` or ``None`` = infer). Returns the path."""
    found = table_kind(frame)
    if kind is not None and kind != found:
        _check_columns(frame, SCORE_COLUMNS if kind == "soft" else SPAN_COLUMNS, f"{kind} table")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _typed(frame.reset_index(drop=True)).to_parquet(path, index=False)
    return path


def load_table(path: str | Path, kind: Optional[str] = None) -> pd.DataFrame:
    """Read a table written by :func:`save_table`; the columns are checked (``kind`` as there)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rationale table {path} does not exist")
    frame = pd.read_parquet(path)
    try:
        found = table_kind(frame)
        if kind is not None and kind != found:
            _check_columns(frame, SCORE_COLUMNS if kind == "soft" else SPAN_COLUMNS, f"{kind} table")
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return _typed(frame)


# --------------------------------------------------------------------------------------------
# code sets
# --------------------------------------------------------------------------------------------
def codes_for_rationales(
    docs,
    predictions: Optional[pd.DataFrame] = None,
    code_set: Literal["gold", "predicted", "both"] = "both",
) -> pd.DataFrame:
    """The (note, code) pairs to explain: gold codes, predicted codes (``pred`` true) or their
    union, for the notes of ``docs``. Columns ``note_id, code, is_gold, is_predicted, prob``
    (``prob`` NaN where the predictions lack the pair)."""
    if code_set not in ("gold", "predicted", "both"):
        raise ValueError(f"code_set must be gold, predicted or both, got {code_set!r}")
    gold = _doc_codes(docs)
    gold_pairs = {(n, c) for n, cs in gold.items() for c in cs}
    pred_pairs: set[tuple[str, str]] = set()
    prob: dict[tuple[str, str], float] = {}
    if predictions is not None and len(predictions):
        _check_columns(predictions, ["note_id", "code", "pred"], "predictions")
        p = predictions[predictions["note_id"].astype(str).isin(gold)]
        for r in p.itertuples(index=False):
            key = (str(r.note_id), str(r.code))
            if "prob" in p.columns:
                prob[key] = float(r.prob)
            if bool(r.pred):
                pred_pairs.add(key)
    elif code_set != "gold":
        raise ValueError(f"code_set={code_set!r} needs predictions")
    pairs = {"gold": gold_pairs, "predicted": pred_pairs, "both": gold_pairs | pred_pairs}[code_set]
    rows = sorted(pairs)
    return pd.DataFrame(
        {
            "note_id": [n for n, _ in rows],
            "code": [c for _, c in rows],
            "is_gold": [p in gold_pairs for p in rows],
            "is_predicted": [p in pred_pairs for p in rows],
            "prob": [prob.get(p, np.nan) for p in rows],
        },
        columns=["note_id", "code", "is_gold", "is_predicted", "prob"],
    )


# --------------------------------------------------------------------------------------------
# model rationales
# --------------------------------------------------------------------------------------------
def _plan(model, docs, codes_per_note: pd.DataFrame):
    """Per note: ``[(code, label_row)]``; and the pairs whose code the model lacks."""
    texts = doc_texts(docs)
    _check_columns(codes_per_note, ["note_id", "code"], "codes_per_note")
    row_of = {c: i for i, c in enumerate(model.labels)}
    pairs = codes_per_note[["note_id", "code"]].astype(str).drop_duplicates()
    unknown_notes = sorted(set(pairs["note_id"]) - set(texts))
    if unknown_notes:
        raise DataError(f"codes_per_note: unknown note_id(s) {unknown_notes[:5]}")
    known = pairs["code"].isin(row_of)
    missing = pairs[~known].reset_index(drop=True)
    if len(missing):
        warnings.warn(
            f"{len(missing)} (note, code) pair(s) ask for codes the model does not have "
            f"({missing['code'].nunique()} distinct, e.g. {sorted(missing['code'].unique())[:5]}); "
            "they get no model rationale",
            stacklevel=3,
        )
    plan: dict[str, list[tuple[str, int]]] = {}
    for nid, code in pairs[known].itertuples(index=False):
        plan.setdefault(nid, []).append((code, row_of[code]))
    return texts, plan, missing


def _model_device(model, device):
    import torch

    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _progress(it, progress: bool, total: int, desc: str):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc)


def _soft_frame(parts: list) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            SCORE_COLUMNS, ["object"] * 5 + ["int64", "int64", "int64", "float64"])})
    frame = pd.concat(parts, ignore_index=True)[SCORE_COLUMNS]
    return frame.astype(_DTYPES)


def _pair_rows(nid, code, source, method, model_name, offsets, scores) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame(
        {
            "note_id": [nid] * n, "code": [code] * n, "source": [source] * n,
            "method": [method] * n, "model": [model_name] * n,
            "unit": np.arange(n, dtype=np.int64), "start": offsets[:, 0], "end": offsets[:, 1],
            "score": np.asarray(scores, dtype=np.float64),
        }
    )


def _name(model, model_name):
    return model_name or getattr(model, "name", None) or type(model).__name__.lower()


def attention_rationales(
    model,
    docs,
    codes_per_note: pd.DataFrame,
    source: str = "attention",
    model_name: Optional[str] = None,
    batch_size: int = 8,
    device=None,
    progress: bool = False,
    method: str = "attention",
) -> SoftResult:
    """Label-wise attention of ``model`` as soft rationales of the requested pairs.

    Each note is encoded once; a batch of notes goes through one forward with ``label_idx`` =
    the union of the batch's requested codes; the attention row of (note, code) over the note's
    ``n`` units is one pair's rationale (scores sum to 1 by the model contract; not
    renormalised). Pairs whose code is not in ``model.labels`` are counted in ``n_missing``.
    """
    import torch

    texts, plan, missing = _plan(model, docs, codes_per_note)
    dev = _model_device(model, device)
    name = _name(model, model_name)
    was_training = model.training
    model.eval()
    parts = []
    notes = list(plan)
    try:
        with torch.no_grad():
            batches = range(0, len(notes), batch_size)
            for b0 in _progress(batches, progress, len(batches), f"attention {name}"):
                batch = notes[b0:b0 + batch_size]
                encs = [model.tokenizer.encode(texts[nid]) for nid in batch]
                rows = sorted({r for nid in batch for _, r in plan[nid]})
                pos = {r: k for k, r in enumerate(rows)}
                ids, mask = model.collate(encs)
                out = model(ids.to(dev), mask.to(dev),
                            label_idx=torch.as_tensor(rows, dtype=torch.long, device=dev))
                att = out.attention.float().cpu().numpy()
                for bi, (nid, enc) in enumerate(zip(batch, encs)):
                    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
                    n = len(offsets)
                    for code, r in plan[nid]:
                        parts.append(_pair_rows(nid, code, source, method, name, offsets,
                                                att[bi, pos[r], :n]))
    finally:
        model.train(was_training)
    return SoftResult(_soft_frame(parts), len(missing), missing)


def _gl_nodes(steps: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1.0) / 2.0, w / 2.0


def explain_encoded(
    model,
    enc,
    label_rows: Sequence[int],
    method: GradientMethod = DEFAULT_GRADIENT_METHOD,
    steps: int = 16,
    device=None,
) -> dict:
    """Gradient attributions of one encoded note for the codes at ``label_rows`` (one batch).

    Returns ``{"scores": [K, n] signed attributions (IG, input x gradient) or attention x grad
    norm, "logits": [K], "baseline_logits": [K] (IG only)}`` as numpy arrays. The model is used
    as is (call ``model.eval()`` first to switch dropout off).
    """
    import torch

    dev = _model_device(model, device)
    K = len(label_rows)
    n = len(enc.ids)
    ids, mask = model.collate([enc])
    ids, mask = ids.to(dev), mask.to(dev)
    T = ids.shape[1]
    label_idx = torch.as_tensor(list(label_rows), dtype=torch.long, device=dev)
    maskK = mask.expand(K, T)
    diag = torch.arange(K, device=dev)
    with torch.no_grad():
        x = model.embed(ids).float()  # [1, T, E]

    def grads(inp: torch.Tensor, want_attention: bool = False):
        inp = inp.expand(K, -1, -1).clone().requires_grad_(True)
        out = model.forward_from_embeddings(inp, maskK, label_idx=label_idx)
        logits = out.logits[diag, diag]
        (g,) = torch.autograd.grad(logits.sum(), inp)
        att = out.attention[diag, diag].detach() if want_attention else None
        return g.detach(), logits.detach(), att

    result: dict = {}
    if method == "input_x_gradient":
        g, logits, _ = grads(x)
        result["scores"] = (x * g).sum(-1)[:, :n]
        result["logits"] = logits
    elif method == "attention_x_gradient":
        g, logits, att = grads(x, want_attention=True)
        result["scores"] = (att.float() * g.norm(dim=-1))[:, :n]
        result["logits"] = logits
    elif method == "integrated_gradients":
        base_ids = ids.clone()
        base_ids[0, :n] = int(model.tokenizer.mask_id)
        with torch.no_grad():
            xb = model.embed(base_ids).float()
        alphas, weights = _gl_nodes(steps)
        total = torch.zeros(K, T, x.shape[-1], device=dev)
        for a, w in zip(alphas, weights):
            g, _, _ = grads(xb + float(a) * (x - xb))
            total += float(w) * g
        attr = ((x - xb) * total).sum(-1)  # [K, T]; zero at padding (same ids)
        with torch.no_grad():
            lx = model.forward_from_embeddings(x.expand(K, -1, -1), maskK, label_idx=label_idx).logits[diag, diag]
            lb = model.forward_from_embeddings(xb.expand(K, -1, -1), maskK, label_idx=label_idx).logits[diag, diag]
        result["scores"] = attr[:, :n]
        result["logits"] = lx
        result["baseline_logits"] = lb
        result["attribution_sum"] = attr.sum(-1)
    else:
        raise ValueError(
            f"unknown gradient method {method!r} (attention_x_gradient, input_x_gradient, "
            "integrated_gradients)"
        )
    return {k: v.float().cpu().numpy() for k, v in result.items()}


def gradient_rationales(
    model,
    docs,
    codes_per_note: pd.DataFrame,
    method: GradientMethod = DEFAULT_GRADIENT_METHOD,
    steps: int = 16,
    source: str = "gradient",
    model_name: Optional[str] = None,
    code_batch: int = 8,
    device=None,
    progress: bool = False,
    absolute: bool = True,
) -> SoftResult:
    """Gradient-based soft rationales of the requested pairs (see the module docstring for the
    three methods). The codes of a note are explained together, ``code_batch`` at a time (memory
    grows with ``code_batch`` x units x embedding size). ``absolute``: store ``|attribution|``
    (input x gradient and IG; attention x gradient is non-negative anyway). ``diagnostics`` (IG):
    ``note_id, code, logit, baseline_logit, attribution_sum, delta = attribution_sum - (logit -
    baseline_logit), rel_error = |delta| / max(|logit - baseline_logit|, 1e-6)``."""
    texts, plan, missing = _plan(model, docs, codes_per_note)
    name = _name(model, model_name)
    was_training = model.training
    model.eval()
    parts, diag_rows = [], []
    try:
        for nid in _progress(list(plan), progress, len(plan), f"{method} {name}"):
            enc = model.tokenizer.encode(texts[nid])
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            items = plan[nid]
            for c0 in range(0, len(items), code_batch):
                chunk = items[c0:c0 + code_batch]
                res = explain_encoded(model, enc, [r for _, r in chunk], method, steps, device)
                for k, (code, _r) in enumerate(chunk):
                    sc = res["scores"][k]
                    if absolute:
                        sc = np.abs(sc)
                    parts.append(_pair_rows(nid, code, source, method, name, offsets, sc))
                    if method == "integrated_gradients":
                        lx, lb = float(res["logits"][k]), float(res["baseline_logits"][k])
                        s = float(res["attribution_sum"][k])
                        diag_rows.append({
                            "note_id": nid, "code": code, "logit": lx, "baseline_logit": lb,
                            "attribution_sum": s, "delta": s - (lx - lb),
                            "rel_error": abs(s - (lx - lb)) / max(abs(lx - lb), 1e-6),
                        })
    finally:
        model.train(was_training)
    diagnostics = pd.DataFrame(diag_rows) if method == "integrated_gradients" else None
    return SoftResult(_soft_frame(parts), len(missing), missing, diagnostics)
