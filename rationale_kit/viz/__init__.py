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


def styled_table(frame: pd.DataFrame, number_format: str = "{:.3f}"):
    """A pandas ``Styler`` of ``frame`` with numbers formatted and every label and text cell
    HTML-escaped (code names, model names and sources come from the data)."""
    def fmt(v):
        is_number = isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        return number_format.format(v) if is_number else v  # text arrives HTML-escaped

    return (frame.style.format(fmt, escape="html", na_rep="–")
            .format_index(escape="html", axis=0).format_index(escape="html", axis=1))


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
# the explorer: a pure renderer of one selection (tested without widgets), a thin widget shell
# --------------------------------------------------------------------------------------------
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

    from rationale_kit.core.text import WORD_RE

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


def plot_bars(table: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", path=None, ylabel: str | None = None,
              lo: str | None = None, hi: str | None = None):
    """A labelled bar chart of ``y`` by ``x`` (and ``hue``); with ``lo``/``hi`` (columns of the
    interval bounds, one row per bar) each bar gets its interval as an error bar."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * table[x].nunique() * (table[hue].nunique() if hue else 1)), 4))
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    if lo is not None and hi is not None and len(table):
        xs = list(dict.fromkeys(table[x]))
        hues = list(dict.fromkeys(table[hue])) if hue else [None]
        bounds = {(r[x], r[hue] if hue else None): (r[lo], r[hi]) for _, r in table.iterrows()}
        for cont, h in zip(list(ax.containers), hues):
            for bar, xv in zip(cont, xs):
                b = bounds.get((xv, h))
                if b is None or not np.isfinite(b[0]) or not np.isfinite(b[1]):
                    continue
                v = bar.get_height()
                ax.errorbar(bar.get_x() + bar.get_width() / 2, v, yerr=[[max(0.0, v - b[0])], [max(0.0, b[1] - v)]],
                            fmt="none", ecolor="black", capsize=3, lw=1)
    for cont in ax.containers:
        if hasattr(cont, "patches"):
            ax.bar_label(cont, fmt="%.2f", fontsize=7)
    ax.set_title(title + (" (95% bootstrap intervals over notes)" if lo is not None else ""))
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
