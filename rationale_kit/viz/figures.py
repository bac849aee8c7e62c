"""Figures of the notebooks (matplotlib/seaborn); every function returns the Figure and saves it
when given a path."""
from __future__ import annotations

import numpy as np
import pandas as pd


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


#: Colour of each verdict (grid cells, forest-plot rows); unknown verdicts are drawn grey-blue.
VERDICT_COLOURS = {"holds": "#1b7837", "does not hold": "#c51b7d", "inconclusive": "#8c8c8c",
                   "borderline": "#e08214", "too few notes": "#9fb6cd"}
VERDICT_ORDER = ("holds", "does not hold", "borderline", "inconclusive", "too few notes")
_OTHER = "#5b7fa6"


def verdict_colour(verdict: str) -> str:
    return VERDICT_COLOURS.get(str(verdict), _OTHER)


def plot_forest(rows: pd.DataFrame, path=None, width: float = 11.0):
    """A forest plot of verdict rows: one panel per ``group`` (a finding), one row per comparison,
    the effect as a dot and its interval as a line coloured by ``verdict``, 0 dashed, and on the
    right ``note`` (n, stability). ``rows``: ``group, label, effect, lo, hi, verdict, note`` (rows
    without a finite effect are listed with "no estimate"). Panels keep their own x scale (the
    findings measure different quantities)."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    groups = list(dict.fromkeys(rows["group"])) if len(rows) else []
    if not groups:
        fig, ax = plt.subplots(figsize=(width, 1.2))
        ax.text(0.5, 0.5, "no verdict rows yet", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        return _finish(fig, path)
    wrap = lambda t: "\n".join(textwrap.wrap(str(t), 66, max_lines=2, placeholder="…"))
    labels = [wrap(t) for t in rows["label"]]
    lines = [lab.count("\n") + 1 for lab in labels]
    row_h, head_h, gap_h = 0.22, 0.3, 0.32  # inches: per label line, panel title, between panels
    heights = [sum(max(1.25, 0.9 * n) for n, g in zip(lines, rows["group"]) if g == grp) * row_h for grp in groups]
    total = sum(heights) + len(groups) * head_h + (len(groups) - 1) * gap_h + 0.75
    fig = plt.figure(figsize=(width, total))
    top = 1 - 0.22 / total
    for i, g in enumerate(groups):
        mask = (rows["group"] == g).to_numpy()
        part = rows[mask].reset_index(drop=True)
        labs = [lab for lab, m in zip(labels, mask) if m]
        ax_top = top - head_h / total
        ax_h = heights[i] / total
        ax = fig.add_axes((0.4, ax_top - ax_h, 0.32, ax_h))
        top = ax_top - ax_h - gap_h / total
        y = np.arange(len(part))[::-1]
        finite = part[["effect", "lo", "hi"]].apply(pd.to_numeric, errors="coerce")
        ax.axvline(0, ls="--", c="#555", lw=0.8, zorder=1)
        for yi, (_, r), (_, f) in zip(y, part.iterrows(), finite.iterrows()):
            c = verdict_colour(r["verdict"])
            if np.isfinite(f["lo"]) and np.isfinite(f["hi"]):
                ax.plot([f["lo"], f["hi"]], [yi, yi], c=c, lw=2.4, solid_capstyle="butt", zorder=2)
            if np.isfinite(f["effect"]):
                ax.plot(f["effect"], yi, "o", c=c, ms=6, zorder=3)
            else:
                ax.text(0.01, yi, "no estimate", va="center", fontsize=7.5, color="#777",
                        transform=ax.get_yaxis_transform())
        vals = finite.to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        lo, hi = (min(vals.min(), 0.0), max(vals.max(), 0.0)) if len(vals) else (-1.0, 1.0)
        pad = 0.06 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.6, len(part) - 0.4)
        ax.set_yticks(y, labs, fontsize=7.5)
        for yi, note in zip(y, part["note"]):
            ax.annotate(str(note), (1.02, yi), xycoords=("axes fraction", "data"), va="center", fontsize=7.5, color="#333")
        ax.set_title(str(g), loc="left", fontsize=9.5, fontweight="bold", x=-0.4 / 0.32 + 0.01, ha="left")
        ax.tick_params(axis="x", labelsize=7.5)
        ax.grid(axis="x", lw=0.3, color="#ddd")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        last = ax
    last.set_xlabel("effect a - b (each panel its own scale), 95% interval", fontsize=8)
    present = [v for v in VERDICT_ORDER if v in set(rows["verdict"])] + sorted(set(rows["verdict"]) - set(VERDICT_ORDER))
    handles = [Line2D([0], [0], c=verdict_colour(v), lw=2.4, marker="o", ms=5, label=v) for v in present]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False, bbox_to_anchor=(0.99, 1.0))
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def figure_png(fig, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes (closed afterwards: report figures are not shown inline)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
