"""Static pages of an ``explain`` run: one page per note (every explained code drawn with
:func:`~rationale_kit.viz.spans.render_note`: spans of each source as underlines, the soft score of
one model source as shading) and an index page. Everything from the notes is escaped.
"""
from __future__ import annotations

import hashlib
import html
import re
from typing import Optional

import pandas as pd

from rationale_kit.viz.spans import SOURCE_COLOURS, Layer, render_note, window_around

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def note_filename(note_id: str) -> str:
    """A file name for a note's page: the id when it is made of ``[A-Za-z0-9._-]`` (and does not
    start with a dot), else its safe characters plus a short hash of the id (never a path)."""
    nid = str(note_id)
    safe = _SAFE.sub("_", nid)[:80]
    if safe != nid or not safe or safe.startswith("."):
        safe = f"{safe.lstrip('.')[:60]}-{hashlib.sha1(nid.encode('utf-8')).hexdigest()[:10]}"
    return safe + ".html"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px} table{border-collapse:collapse}"
            " td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} .rk-code{margin:1.2em 0} .rk-text{max-height:none !important}</style>"
            f"</head><body>{body}</body></html>\n")


def _span_name(source: str, method: str) -> str:
    if source == "entity":
        return f"entity ({method})"
    if source == "llm":
        return "llm"
    return f"{source} top-k"


def note_page(note_id: str, text: str, predictions: pd.DataFrame, spans: pd.DataFrame, scores: pd.DataFrame,
              descriptions: Optional[dict] = None, shade: Optional[str] = None, info: Optional[dict] = None,
              margin: int = 300) -> str:
    """The page of one note: its predicted codes, then per explained code the note with every
    source's spans (underlines) and ``shade``'s scores (default: attention when present, else the
    first soft source) as shading, on the characters from ``margin`` before the code's first span to
    ``margin`` after its last (the whole note when it has none). ``predictions``/``spans``/``scores``: that note's rows of an
    :class:`~rationale_kit.workbook.explain.Explanation`."""
    descriptions = descriptions or {}
    soft_sources = list(dict.fromkeys(scores.source)) if len(scores) else []
    shade = shade if shade in soft_sources else ("attention" if "attention" in soft_sources else
                                                 (soft_sources[0] if soft_sources else None))
    names = list(dict.fromkeys(_span_name(s, m) for s, m in zip(spans.source, spans.method))) if len(spans) else []
    colour = {n: SOURCE_COLOURS[i % len(SOURCE_COLOURS)] for i, n in enumerate(names)}
    thr = float(predictions.threshold.iloc[0]) if len(predictions) else float("nan")
    pred = predictions[predictions.pred.astype(bool)]
    head = (f"<p><a href='../index.html'>all notes</a></p><h2>{html.escape(str(note_id))}</h2>"
            f"<p>{len(text):,} characters · model {html.escape(str((info or {}).get('model', '')))} · "
            f"threshold {thr:.3f} · predicted: {html.escape(', '.join(pred.code)) or 'none'}</p>")
    rows = "".join(
        f"<tr><td>{html.escape(str(r.code))}</td><td>{html.escape(descriptions.get(r.code, ''))}</td>"
        f"<td>{'' if pd.isna(r.prob) else f'{r.prob:.3f}'}</td><td>{'yes' if r.pred else ''}</td>"
        f"<td>{'yes' if r.given else ''}</td><td>{'yes' if r.explained else ''}</td></tr>"
        for r in predictions.itertuples(index=False))
    table = ("<table><tr><th>code</th><th>description</th><th>probability</th><th>predicted</th><th>given</th>"
             f"<th>explained</th></tr>{rows}</table>")
    sections = []
    for r in predictions[predictions.explained.astype(bool)].itertuples(index=False):
        layers = []
        sp = spans[spans.code == r.code] if len(spans) else spans
        for n in names:
            part = sp[[_span_name(s, m) == n for s, m in zip(sp.source, sp.method)]] if len(sp) else sp
            layers.append(Layer(n, "discrete", tuple(zip(part.start, part.end)), colour[n]))
        if shade is not None:
            sc = scores[(scores.code == r.code) & (scores.source == shade)]
            layers.append(Layer(f"{shade} (shading)", "soft", tuple(zip(sc.start, sc.end, sc.score)), "#1565c0"))
        prob = "" if pd.isna(r.prob) else f" · p = {r.prob:.3f}"
        lo, hi = (window_around(text, list(zip(sp.start.astype(int), sp.end.astype(int))), margin) if len(sp)
                  else (0, len(text)))
        shown = "" if (lo, hi) == (0, len(text)) else f" · characters {lo:,}-{hi:,} of {len(text):,} (around the spans)"
        title = f"{r.code} · {descriptions.get(r.code, '')}{prob}{shown}"
        sections.append(f"<div class='rk-code'>{render_note(text, layers, title=title, window=(lo, hi))}</div>")
    body = head + table + ("".join(sections) or "<p>No code explained.</p>")
    return _page(f"{note_id} · explain", body)


def index_page(predictions: pd.DataFrame, docs: pd.DataFrame, files: dict, info: Optional[dict] = None) -> str:
    """The index: one row per note (link, length, predicted and explained codes, spans per source)."""
    info = info or {}
    rows = []
    for nid, text in zip(docs.note_id, docs.text):
        p = predictions[predictions.note_id == nid]
        rows.append(f"<tr><td><a href='notes/{html.escape(files[nid])}'>{html.escape(str(nid))}</a></td>"
                    f"<td>{len(text):,}</td><td>{html.escape(', '.join(p[p.pred.astype(bool)].code))}</td>"
                    f"<td>{html.escape(', '.join(p[p.explained.astype(bool)].code))}</td></tr>")
    meta = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in info.items() if k != "seconds")
    body = (f"<h2>explain: {len(docs)} notes</h2><p>{meta}</p><table><tr><th>note</th><th>characters</th>"
            f"<th>predicted</th><th>explained</th></tr>{''.join(rows)}</table>")
    return _page("explain", body)
