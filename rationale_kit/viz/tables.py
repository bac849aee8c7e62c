"""Tables for notebooks: a pandas ``Styler`` with numbers formatted and every cell escaped."""
from __future__ import annotations

import numpy as np
import pandas as pd


def styled_table(frame: pd.DataFrame, number_format: str = "{:.3f}"):
    """A pandas ``Styler`` of ``frame`` with numbers formatted and every label and text cell
    HTML-escaped (code names, model names and sources come from the data)."""
    def fmt(v):
        is_number = isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        return number_format.format(v) if is_number else v  # text arrives HTML-escaped

    return (frame.style.format(fmt, escape="html", na_rep="–")
            .format_index(escape="html", axis=0).format_index(escape="html", axis=1))
