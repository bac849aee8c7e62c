"""Figures and the rationale explorer.

``render_note`` draws a note as static, escaped HTML with overlapping highlights: gold spans as
background colour per granularity, discrete rationale sources as coloured underlines (stacked),
soft rationales (attention) as graded shading. Note text is always escaped: it is never markup.
``explorer`` puts an ipywidgets front end on the same renderer.
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


# --------------------------------------------------------------------------------------------
# figures (matplotlib/seaborn); every function returns the Figure and saves it when given a path
# --------------------------------------------------------------------------------------------
def _finish(fig, path=None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_dataset_overview(docs: pd.DataFrame, spans: pd.DataFrame, title: str = "", path=None, top: int = 40):
    """Three panels: code frequency (top codes), note length in words, span length by granularity."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .text import WORD_RE

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    freq = docs.explode("codes")["codes"].value_counts().head(top)
    axes[0].bar(range(len(freq)), freq.values, color="#5c6bc0")
    axes[0].set_xticks(range(len(freq)), freq.index, rotation=90, fontsize=6)
    axes[0].set_title(f"code frequency (top {len(freq)})")
    axes[0].set_ylabel("documents")
    words = docs["text"].map(lambda t: len(WORD_RE.findall(t)))
    sns.histplot(x=words, hue=docs["split"], bins=40, ax=axes[1], element="step")
    axes[1].axvline(512, ls="--", c="grey")
    axes[1].set_title("note length (words); dashed: 512")
    axes[1].set_xlabel("words")
    if len(spans):
        texts = dict(zip(docs.note_id, docs.text))
        lens = [len(WORD_RE.findall(texts[n][s:e])) for n, s, e in zip(spans.note_id, spans.start, spans.end)]
        sns.boxplot(x=spans["granularity"].replace("", "span"), y=lens, ax=axes[2], color="#ffcc80", showfliers=False)
        axes[2].set_ylabel("words")
    axes[2].set_title("span length by granularity")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_learning_curves(history: pd.DataFrame, path=None):
    """history: model, epoch, train_loss, val_map, val_micro_f1 (long)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, h in history.groupby("model", sort=False):
        axes[0].plot(h["epoch"], h["train_loss"], marker="o", label=name)
        axes[1].plot(h["epoch"], h["val_map"], marker="o", label=name)
    axes[0].set_title("training loss")
    axes[1].set_title("validation mAP")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    return _finish(fig, path)


def plot_bars(table: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", path=None, ylabel: str | None = None):
    """A labelled bar chart of ``y`` by ``x`` (and ``hue``)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * table[x].nunique() * (table[hue].nunique() if hue else 1)), 4))
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.2f", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel or y)
    ax.tick_params(axis="x", rotation=30)
    return _finish(fig, path)


def plot_alignment_scores(aligned: pd.DataFrame, threshold: float, path=None):
    """Histogram of overlap scores of aligned and unaligned quote rows, by teacher."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 3.8))
    if not len(aligned):
        ax.text(0.5, 0.5, "no quotes to align", ha="center", va="center", transform=ax.transAxes)
        return _finish(fig, path)
    frame = aligned.assign(status=np.where(aligned["start"].notna(), "aligned", "unaligned"))
    sns.histplot(data=frame, x="score", hue="status", multiple="stack", bins=np.linspace(0, 2, 41), ax=ax)
    ax.axvline(threshold, ls="--", c="k")
    ax.set_title(f"overlap score (token precision + recall); threshold {threshold}")
    return _finish(fig, path)


def plot_threshold_effect(sweep: pd.DataFrame, path=None):
    """Alignment rate and downstream PI token F1 against the alignment threshold, per teacher."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for src, part in sweep.groupby("source"):
        axes[0].plot(part["threshold"], part["alignment_rate"], marker="o", label=src)
        axes[1].plot(part["threshold"], part["pi_token_f1"], marker="o", label=src)
    axes[0].set_title("alignment rate")
    axes[1].set_title("plausibility of aligned spans (PI token F1)")
    for ax in axes:
        ax.set_xlabel("threshold")
        ax.legend()
    return _finish(fig, path)


def plot_aopc_curves(curves: pd.DataFrame, path=None):
    """Per-k AOPC values (columns model, source, measure, k, value, control): one panel per measure,
    one line per model and source, dashed for the random control."""
    import matplotlib.pyplot as plt

    measures = sorted(curves["measure"].unique())
    fig, axes = plt.subplots(1, max(1, len(measures)), figsize=(6 * max(1, len(measures)), 3.8), squeeze=False)
    mean = curves.groupby(["measure", "model", "source", "control", "k"])["value"].mean().reset_index()
    for ax, m in zip(axes[0], measures):
        for (model, src, ctrl), part in mean[mean.measure == m].groupby(["model", "source", "control"]):
            ax.plot(part["k"], part["value"], marker="o", ls="--" if ctrl == "random" else "-",
                    label=f"{model} {src}" + (" (random)" if ctrl == "random" else ""))
        ax.set_xscale("log")
        ax.set_xlabel("k (% of units)")
        ax.set_title(m)
        ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_tradeoff(sweep: pd.DataFrame, path=None):
    """Coding micro-F1 against PI token F1 of the attention, one point per λ, a line per teacher."""
    import matplotlib.pyplot as plt

    models = list(sweep["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        part = sweep[sweep.model == model]
        base = part[part["lambda"] == 0]
        for teacher, t in part[part["lambda"] > 0].groupby("teacher"):
            t = pd.concat([base, t]).sort_values("lambda")
            ax.plot(t["pi_token_f1"], t["micro_f1"], marker="o", label=teacher)
            for r in t.itertuples(index=False):
                ax.annotate(f"{r[2]:g}", (r.pi_token_f1, r.micro_f1), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.scatter(base["pi_token_f1"], base["micro_f1"], c="k", zorder=5, label="λ = 0")
        ax.set_xlabel("plausibility: PI token F1 of top-k attention")
        ax.set_ylabel("coding micro-F1 (test)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_ner_sizes(ner: pd.DataFrame, path=None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for teacher, part in ner.groupby("teacher") if len(ner) else []:
        ax.plot(part["train notes"], part["pi_token_f1"], marker="o", label=teacher)
        ax.legend()
    ax.set_xlabel("training notes")
    ax.set_ylabel("PI token F1")
    ax.set_title("NER tagger: plausibility against training-set size")
    return _finish(fig, path)
