"""The rationale explorer: a pure renderer of one selection (note, code, sources, model; tested
without widgets) and a thin ipywidgets shell around it, with the pair's measures below the note.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from rationale_kit.viz.spans import layers_for_pair, render_note, window_around

MEASURE_ORDER = ("plausibility (token F1)", "plausibility (PI token F1)", "comprehensiveness", "sufficiency",
                 "aopc_comp", "aopc_suff")


def pair_plausibility(gold: pd.DataFrame, sources: dict[str, pd.DataFrame], docs: pd.DataFrame,
                      model: str = "-", unit: str = "mdace") -> pd.DataFrame:
    """Per-pair plausibility of discrete sources against ``gold`` (pairs with gold spans): token F1
    and position-independent token F1, long (``note_id, code, source, model, measure, value``)."""
    from rationale_kit.metrics.plausibility import Tokens, prf

    tokens = Tokens(docs, unit)
    known = set(tokens.texts)

    def sets(nid, spans):
        words = tokens.get(nid)[2]
        idx = {i for s, e in spans for i in tokens.covered(nid, int(s), int(e))}
        return idx, {words[i] for i in idx}

    def by_pair(t):
        t = t[t.note_id.astype(str).isin(known)]
        return {(str(n), str(c)): list(zip(p.start, p.end)) for (n, c), p in t.groupby(["note_id", "code"], sort=True)}

    gsets = {k: sets(k[0], v) for k, v in by_pair(gold).items()}
    rows = []
    for name, table in sources.items():
        pred = by_pair(table)
        for (nid, code), (gi, gw) in gsets.items():
            pi, pw = sets(nid, pred.get((nid, code), ()))
            for measure, g, p in (("plausibility (token F1)", gi, pi), ("plausibility (PI token F1)", gw, pw)):
                rows.append((nid, code, name, model, measure, prf(len(g & p), len(p - g), len(g - p))["f1"]))
    return pd.DataFrame(rows, columns=["note_id", "code", "source", "model", "measure", "value"])


def _measure_rows(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-pair measure tables, normalised to ``note_id, code, source, model, label, measure, value``."""
    cols = ["note_id", "code", "source", "model", "label", "measure", "value"]
    parts = []
    for t in tables:
        if t is None or not len(t):
            continue
        missing = [c for c in ("note_id", "code", "source", "measure") if c not in t.columns]
        if missing:
            raise ValueError(f"measures table lacks {missing}: the explorer needs per-pair rows (notebook 06's "
                             "plausibility.parquet is aggregated; build per-pair rows with viz.pair_plausibility)")
        if "k" in t.columns:  # AOPC curve points: keep the per-pair summaries only
            t = t[t["k"].isna()]
        value = "value" if "value" in t.columns else "f1" if "f1" in t.columns else None
        if value is None:
            raise ValueError("measures table needs a 'value' (or 'f1') column")
        control = t["control"].fillna("rationale").astype(str) if "control" in t.columns else "rationale"
        source = t["source"].astype(str)
        model = t["model"].astype(object).fillna("-").astype(str) if "model" in t.columns else "-"
        parts.append(pd.DataFrame({
            "note_id": t["note_id"].astype(str), "code": t["code"].astype(str), "source": source, "model": model,
            "label": np.where(control == "rationale", source, source + " · " + control + " control"),
            "measure": t["measure"].astype(str), "value": t[value].astype(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


@dataclass
class ExplorerData:
    """Everything the explorer draws from; build it with :func:`explorer_data`."""

    texts: dict
    gold: pd.DataFrame | None
    discrete: dict
    soft: pd.DataFrame | None
    measures: pd.DataFrame
    _soft_idx: dict = field(default_factory=dict, repr=False)
    _meas_idx: dict = field(default_factory=dict, repr=False)


def explorer_data(docs: pd.DataFrame, gold: pd.DataFrame | None = None, discrete: dict[str, pd.DataFrame] | None = None,
                  soft: pd.DataFrame | None = None, measures: Sequence[pd.DataFrame] = ()) -> ExplorerData:
    """Check and index the tables: ``docs`` (``note_id, text``), gold and discrete span tables, the
    soft table of notebook 03 (``source, model, start, end, score``) and per-pair measure tables
    (e.g. notebook 05's faithfulness, :func:`pair_plausibility`)."""
    texts = dict(zip(docs["note_id"].astype(str), docs["text"]))
    keep = lambda t: None if t is None else t[t.note_id.astype(str).isin(texts)].reset_index(drop=True)
    discrete = {str(k): keep(v) for k, v in (discrete or {}).items()}
    soft = keep(soft)
    if soft is not None:
        soft = soft.assign(source=soft["source"].astype(str) if "source" in soft else "soft",
                           model=soft["model"].astype(str) if "model" in soft else "-")
        clash = set(soft.source) & set(discrete)
        if clash:
            raise ValueError(f"source names used by both discrete and soft tables: {sorted(clash)}")
    meas = keep(_measure_rows(list(measures)))
    pair_index = lambda t: {} if t is None else t.groupby([t.note_id.astype(str), t.code.astype(str)], sort=False).indices
    return ExplorerData(texts, keep(gold), discrete, soft, meas, pair_index(soft), pair_index(meas))


def explorer_notes(data: ExplorerData) -> list[str]:
    """Notes with at least one gold, discrete or soft row (every note when there are none)."""
    tables = [data.gold, data.soft, *data.discrete.values()]
    ids = {str(n) for t in tables if t is not None for n in t.note_id.unique()}
    return sorted(ids) or sorted(data.texts)


def explorer_codes(data: ExplorerData, note_id: str) -> list[str]:
    """Codes of ``note_id`` that some gold, discrete or soft row explains."""
    out = {c for n, c in data._soft_idx if n == note_id}
    for t in [data.gold, *data.discrete.values()]:
        if t is not None:
            out.update(t.code[t.note_id.astype(str) == note_id].astype(str))
    return sorted(out)


def explorer_sources(data: ExplorerData) -> list[str]:
    """Discrete source names, then soft ones (e.g. ``attention``, ``gradient``)."""
    soft = [] if data.soft is None else sorted(data.soft.source.unique())
    return list(data.discrete) + soft


def explorer_models(data: ExplorerData) -> list[str]:
    models = set() if data.soft is None else set(data.soft.model.unique())
    models |= set(data.measures.model.unique())
    return sorted(models - {"-"})


def pair_measures(data: ExplorerData, note_id: str, code: str, sources: Sequence[str], model: str | None) -> pd.DataFrame:
    """Measures of one pair: a row per selected source (and control), a column per measure. A
    source also matches measure rows named after it plus a suffix (``attention top-10``)."""
    rows = data.measures.iloc[data._meas_idx.get((note_id, code), [])]
    named = np.array([any(s == x or s.startswith(x + " ") for x in sources) for s in rows.source], dtype=bool)
    rows = rows[rows.model.isin({"-", model}).to_numpy() & named]
    if not len(rows):
        return pd.DataFrame()
    wide = rows.pivot_table(index="label", columns="measure", values="value", aggfunc="mean", sort=False)
    rank = {m: i for i, m in enumerate(MEASURE_ORDER)}
    first = lambda label: min(i for i, x in enumerate(sources) if label == x or label.startswith(x + " "))
    return wide.loc[sorted(wide.index, key=lambda l: (first(l), l.endswith(" control"), l)),
                    sorted(wide.columns, key=lambda m: (rank.get(m, len(rank)), m))]


def measures_html(wide: pd.DataFrame) -> str:
    """An escaped HTML table of :func:`pair_measures`."""
    if not len(wide):
        return "<div class='rk-pair-measures' style='color:#777'>no per-pair measures for this selection</div>"
    cell = "padding:1px 8px;border-bottom:1px solid #eee"
    head = "".join(f"<th style='{cell}'>{html.escape(str(m))}</th>" for m in wide.columns)
    body = "".join(
        f"<tr><td style='{cell}'>{html.escape(str(label))}</td>"
        + "".join(f"<td style='{cell};text-align:right'>{'–' if pd.isna(v) else f'{v:.3f}'}</td>" for v in row)
        + "</tr>" for label, row in zip(wide.index, wide.to_numpy()))
    return (f"<table class='rk-pair-measures' style='font-family:sans-serif;font-size:12px;border-collapse:collapse'>"
            f"<tr><th style='{cell}'>source</th>{head}</tr>{body}</table>")


def selection_html(data: ExplorerData, note_id: str, code: str, sources: Sequence[str] = (), model: str | None = None,
                   whole_note: bool = False, margin: int = 400) -> str:
    """The explorer's output for one selection: :func:`render_note` of the pair with gold and the
    chosen sources (soft ones of ``model``), then the pair's measures. Pure: no widgets."""
    text = data.texts[note_id]
    discrete = {s: data.discrete[s] for s in sources if s in data.discrete}
    soft = {}
    if data.soft is not None:
        rows = data.soft.iloc[data._soft_idx.get((note_id, code), [])]
        for s in sources:
            part = rows[rows.source == s]
            if len(part):  # one model's scores only: layers of several models would blend into one shade
                m = model if model is not None else min(part.model)
                part = part[part.model == m]
            if len(part):
                soft[s if m == "-" else f"{s} ({m})"] = part
    layers = layers_for_pair(note_id, code, gold=data.gold, discrete=discrete, soft=soft)
    window = None
    if not whole_note:
        spans = [(sp[0], sp[1]) for l in layers if l.kind != "soft" for sp in l.spans]
        if not spans:  # soft only: around the best-scored units
            spans = [(sp[0], sp[1]) for l in layers for sp in sorted(l.spans, key=lambda x: -x[2])[:5]]
        window = window_around(text, spans, margin)
    title = f"{note_id} · {code}" + (f" · {model}" if model else "")
    return render_note(text, layers, title=title, window=window) + measures_html(pair_measures(data, note_id, code, sources, model))


def explorer(docs: pd.DataFrame | ExplorerData, gold: pd.DataFrame | None = None,
             discrete: dict[str, pd.DataFrame] | None = None, soft: pd.DataFrame | None = None,
             measures: Sequence[pd.DataFrame] = (), sources: Sequence[str] | None = None,
             note_id: str | None = None, code: str | None = None, model: str | None = None, margin: int = 400):
    """An ipywidgets explorer: note, code, sources and model selectors over one ``widgets.HTML``
    redrawn in place by :func:`selection_html`. Tables as :func:`explorer_data` (or its result as
    ``docs``); ``sources``, ``note_id``, ``code``, ``model``: the first selection (default: the
    discrete sources and the first soft one, the first note, code and model)."""
    import ipywidgets as widgets

    data = docs if isinstance(docs, ExplorerData) else explorer_data(docs, gold, discrete, soft, measures)
    all_sources = explorer_sources(data)
    if sources is None:
        sources = list(data.discrete) + all_sources[len(data.discrete):][:1]
    models = explorer_models(data)
    notes = explorer_notes(data)
    note_id = note_id if note_id in notes else (notes[0] if notes else None)
    codes = explorer_codes(data, note_id) if note_id is not None else []
    w_note = widgets.Dropdown(options=notes, value=note_id, description="note")
    w_code = widgets.Dropdown(options=codes, value=code if code in codes else (codes[0] if codes else None), description="code")
    w_model = widgets.Dropdown(options=models or [("-", None)], value=model if model in models else (models[0] if models else None),
                               description="model", disabled=not models)
    w_sources = widgets.SelectMultiple(options=all_sources, value=[s for s in sources if s in all_sources],
                                       description="sources", rows=min(8, max(2, len(all_sources))))
    w_whole = widgets.Checkbox(value=False, description="whole note")
    out = widgets.HTML()

    def redraw(_=None):
        if w_note.value is None or w_code.value is None:
            out.value = "<i>nothing to show</i>"
            return
        out.value = selection_html(data, w_note.value, w_code.value, list(w_sources.value), w_model.value,
                                   w_whole.value, margin)

    def new_note(_):
        w_code.unobserve(redraw, names="value")  # new options reset the code: draw once, below
        w_code.options = explorer_codes(data, w_note.value)
        w_code.observe(redraw, names="value")
        redraw()

    w_note.observe(new_note, names="value")
    for w in (w_code, w_model, w_sources, w_whole):
        w.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([w_note, w_code, w_model, w_whole]), w_sources, out])
    box.controls = {"note": w_note, "code": w_code, "model": w_model, "sources": w_sources, "whole_note": w_whole, "output": out}
    return box
