"""A note drawn as static, escaped HTML with overlapping highlights: gold spans as background
colour per granularity, discrete rationale sources as coloured underlines (stacked), soft
rationales (attention) as graded shading. Note text is always escaped: it is never markup.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

GOLD_COLOURS = {"mention": "#ffd54f", "evidence": "#aed581", "sentence": "#e1f5fe", "": "#ffe0b2"}
SOURCE_COLOURS = ["#d32f2f", "#1976d2", "#7b1fa2", "#388e3c", "#f57c00", "#00838f", "#5d4037"]


@dataclass(frozen=True)
class Layer:
    """One highlight layer: discrete spans ``[(start, end)]`` or soft ``[(start, end, score)]``."""

    name: str
    kind: str  # "gold" | "discrete" | "soft"
    spans: tuple = ()
    colour: str = ""
    granularity: str = ""


@dataclass
class _Seg:
    start: int
    end: int
    gold: list = field(default_factory=list)
    under: list = field(default_factory=list)
    shade: float = 0.0


def layers_for_pair(
    note_id: str,
    code: str,
    gold: pd.DataFrame | None = None,
    discrete: dict[str, pd.DataFrame] | None = None,
    soft: dict[str, pd.DataFrame] | None = None,
) -> list[Layer]:
    """Build layers for one (note, code) from span tables (gold per granularity) and score tables."""
    layers: list[Layer] = []
    if gold is not None and len(gold):
        g = gold[(gold.note_id == note_id) & (gold.code == code)]
        for gran, part in g.groupby("granularity", sort=True):
            layers.append(Layer(f"gold: {gran or 'span'}", "gold", tuple(zip(part.start, part.end)),
                                GOLD_COLOURS.get(gran, GOLD_COLOURS[""]), gran))
    for i, (name, table) in enumerate((discrete or {}).items()):
        t = table[(table.note_id == note_id) & (table.code == code)]
        layers.append(Layer(name, "discrete", tuple(zip(t.start, t.end)), SOURCE_COLOURS[i % len(SOURCE_COLOURS)]))
    for name, table in (soft or {}).items():
        t = table[(table.note_id == note_id) & (table.code == code)]
        layers.append(Layer(name, "soft", tuple(zip(t.start, t.end, t.score)), "#1565c0"))
    return layers


def render_note(
    text: str,
    layers: Sequence[Layer],
    title: str = "",
    measures: dict[str, float] | None = None,
    window: tuple[int, int] | None = None,
) -> str:
    """Escaped HTML of ``text`` (or ``text[window]``) with every layer drawn; includes a legend."""
    lo, hi = window or (0, len(text))
    cuts = {lo, hi}
    for layer in layers:
        for sp in layer.spans:
            s, e = max(lo, int(sp[0])), min(hi, int(sp[1]))
            if s < e:
                cuts.update((s, e))
    bounds = sorted(cuts)
    segs = [_Seg(a, b) for a, b in zip(bounds, bounds[1:])]
    starts = np.array([s.start for s in segs])
    soft_layers = [l for l in layers if l.kind == "soft"]
    max_score = max((float(sp[2]) for l in soft_layers for sp in l.spans), default=0.0) or 1.0
    slots = {id(l): k for k, l in enumerate(l for l in layers if l.kind == "discrete")}
    for layer in layers:
        for sp in layer.spans:
            s, e = max(lo, int(sp[0])), min(hi, int(sp[1]))
            if s >= e:
                continue
            i0, i1 = np.searchsorted(starts, s), np.searchsorted(starts, e)
            for seg in segs[i0:i1]:
                if layer.kind == "gold":
                    seg.gold.append(layer.colour)
                elif layer.kind == "discrete":
                    if (slots[id(layer)], layer.colour) not in seg.under:
                        seg.under.append((slots[id(layer)], layer.colour))
                else:
                    seg.shade = max(seg.shade, float(sp[2]) / max_score)
    parts = []
    for seg in segs:
        chunk = html.escape(text[seg.start:seg.end]).replace("\n", "<br>")
        style = []
        if seg.gold:
            style.append(f"background-color:{seg.gold[0]}")
        if seg.shade > 0:
            style.append(f"box-shadow: inset 0 -1.1em rgba(21,101,192,{0.15 + 0.6 * seg.shade:.2f})")
        # discrete sources: nested spans, each with its own underline further down (stacked)
        for k, colour in sorted(seg.under):
            chunk = f'<span class="rk-u" style="border-bottom:2px solid {colour};padding-bottom:{3 * k}px">{chunk}</span>'
        attr = f' style="{"; ".join(style)}"' if style else ""
        tag = "mark" if seg.gold else "span"
        parts.append(f"<{tag}{attr}>{chunk}</{tag}>" if attr else chunk)
    legend = []
    for layer in layers:
        if layer.kind == "gold":
            sw = f'<span style="background-color:{layer.colour}">&nbsp;&nbsp;&nbsp;&nbsp;</span>'
        elif layer.kind == "discrete":
            sw = f'<span style="border-bottom:3px solid {layer.colour}">&nbsp;&nbsp;&nbsp;&nbsp;</span>'
        else:
            sw = '<span style="background:linear-gradient(90deg,rgba(21,101,192,.15),rgba(21,101,192,.75))">&nbsp;&nbsp;&nbsp;&nbsp;</span>'
        legend.append(f'<span class="rk-legend-item" style="margin-right:1em">{sw} {html.escape(layer.name)} ({len(layer.spans)})</span>')
    meas = ""
    if measures:
        meas = "<div class='rk-measures'>" + " · ".join(
            f"{html.escape(k)}: {v:.3f}" if isinstance(v, (int, float)) else f"{html.escape(k)}: {html.escape(str(v))}"
            for k, v in measures.items()) + "</div>"
    head = f"<div class='rk-title'><b>{html.escape(title)}</b></div>" if title else ""
    return (
        "<div class='rk-note' style='font-family:sans-serif;font-size:13px;line-height:1.9'>"
        f"{head}<div class='rk-legend' style='margin:4px 0'>{''.join(legend)}</div>{meas}"
        f"<div class='rk-text' style='border:1px solid #ccc;padding:8px;max-height:420px;overflow:auto'>{''.join(parts)}</div></div>"
    )


def window_around(text: str, spans: Sequence[tuple[int, int]], margin: int = 400) -> tuple[int, int]:
    """A character window covering all spans with a margin (whole note when there are none)."""
    if not spans:
        return 0, min(len(text), 2 * margin)
    return max(0, min(s for s, _ in spans) - margin), min(len(text), max(e for _, e in spans) + margin)
