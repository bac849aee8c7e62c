"""Figures and the rationale explorer.

:mod:`.spans` draws a note with its rationales highlighted (escaped HTML), :mod:`.explore` puts
an ipywidgets front end with per-pair measures on that renderer, :mod:`.figures` holds the
notebooks' plots and :mod:`.tables` their styled tables.
"""
from rationale_kit.viz.explore import (
    MEASURE_ORDER,
    ExplorerData,
    explorer,
    explorer_codes,
    explorer_data,
    explorer_models,
    explorer_notes,
    explorer_sources,
    measures_html,
    pair_measures,
    pair_plausibility,
    selection_html,
)
from rationale_kit.viz.figures import (
    VERDICT_COLOURS,
    figure_png,
    plot_alignment_scores,
    plot_aopc_curves,
    plot_bars,
    plot_dataset_overview,
    plot_forest,
    plot_learning_curves,
    plot_ner_sizes,
    plot_threshold_effect,
    plot_tradeoff,
    verdict_colour,
)
from rationale_kit.viz.spans import GOLD_COLOURS, SOURCE_COLOURS, Layer, layers_for_pair, render_note, window_around
from rationale_kit.viz.tables import styled_table

__all__ = [
    "GOLD_COLOURS", "MEASURE_ORDER", "SOURCE_COLOURS", "VERDICT_COLOURS", "ExplorerData", "Layer", "explorer", "explorer_codes",
    "explorer_data", "explorer_models", "explorer_notes", "explorer_sources", "figure_png", "layers_for_pair", "measures_html",
    "pair_measures", "pair_plausibility", "plot_alignment_scores", "plot_aopc_curves", "plot_bars",
    "plot_dataset_overview", "plot_forest", "plot_learning_curves", "plot_ner_sizes", "plot_threshold_effect", "plot_tradeoff",
    "render_note", "selection_html", "styled_table", "verdict_colour", "window_around",
]
