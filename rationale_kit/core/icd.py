"""ICD-10 codes: normalisation, validity, descriptions and hierarchy.

Conventions: ICD-10-CM diagnosis codes are upper case with a dot after the
third character (``E119`` and ``e11.9`` both become ``E11.9``); ICD-10-PCS procedure codes are
upper case without dots (``0dtj4zz`` becomes ``0DTJ4ZZ``; CodiEsp also has 4-character PCS
prefixes such as ``BN20``).

Descriptions and the CM hierarchy come from the offline ``simple_icd_10_cm`` package (FY2026
code set). MIMIC-IV uses older code sets, so its own ``d_icd_diagnoses`` / ``d_icd_procedures``
descriptions are preferred when given (:func:`load_mimic_descriptions`). PCS codes have no
descriptions outside MIMIC's table; their "hierarchy" is the prefix structure of the code
(character 1 = section, 2 = body system, 3 = operation: the first three characters name a PCS
table, which :func:`category` returns).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal, Mapping, Optional

import warnings

import pandas as pd



class _LazyCM:
    """``simple_icd_10_cm``, imported on first use: the package parses its XML tables at import
    (~2 s per process), which kernels that never look a code up should not pay."""

    _module = None

    def __getattr__(self, name: str):
        mod = type(self)._module
        if mod is None:
            with warnings.catch_warnings():  # the package loads its data with deprecated importlib calls
                warnings.simplefilter("ignore", DeprecationWarning)
                import simple_icd_10_cm as mod
            type(self)._module = mod
        return getattr(mod, name)


_cm = _LazyCM()

from rationale_kit.core.records import DataError

System = Literal["cm", "pcs", "auto"]

#: ICD-10-CM: letter, digit, letter or digit (the category), then up to four characters after
#: an optional dot.
CM_RE = re.compile(r"^([A-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?$")
#: ICD-10-PCS: 7 characters from 0-9 and A-Z without I and O; prefixes of 3 to 6 characters
#: are accepted (CodiEsp codes some procedures by their first 4 characters).
PCS_RE = re.compile(r"^[0-9A-HJ-NP-Z]{3,7}$")


class CodeError(DataError):
    """A malformed ICD-10 code; the message names the code."""


def normalize_code(code: str, system: System = "cm") -> str:
    """Canonical form of ``code``: ``"cm"`` dotted upper case, ``"pcs"`` upper case, no dots.

    ``system="auto"`` (a heuristic: use an explicit system when the source says which) picks CM
    for codes with a dot; PCS for 7-character codes in the PCS alphabet unless they are known
    CM codes (``S52521A``); then CM when the CM pattern fits, else PCS. Raises :class:`CodeError` naming the code when it
    does not fit the system's pattern.
    """
    if not isinstance(code, str):
        raise CodeError(f"ICD-10 code must be a string, got {code!r} ({type(code).__name__})")
    raw = code
    c = code.strip().upper()
    if system == "auto":
        return _normalize_auto(raw, c)
    if system == "cm":
        m = CM_RE.match(c)
        if not m:
            raise CodeError(
                f"malformed ICD-10-CM code {raw!r}: expected a letter, a digit and a letter or "
                f"digit, then up to 4 letters or digits after an optional dot (e.g. E11.9)"
            )
        head, tail = m.group(1), m.group(2)
        return f"{head}.{tail}" if tail else head
    if system == "pcs":
        if not PCS_RE.match(c):
            raise CodeError(
                f"malformed ICD-10-PCS code {raw!r}: expected 3 to 7 characters from 0-9 and "
                f"A-Z without I and O, no dots (e.g. 0DTJ4ZZ)"
            )
        return c
    raise ValueError(f"unknown code system {system!r} (use 'cm', 'pcs' or 'auto')")


def _normalize_auto(raw: str, c: str) -> str:
    if "." in c:
        return normalize_code(raw, "cm")
    if len(c) == 7 and PCS_RE.match(c):
        m = CM_RE.match(c)
        if not (m and _cm.is_valid_item(normalize_code(raw, "cm"))):
            return c
    if CM_RE.match(c):
        return normalize_code(raw, "cm")
    if PCS_RE.match(c):
        return c
    raise CodeError(f"malformed ICD-10 code {raw!r}: neither an ICD-10-CM nor an ICD-10-PCS code")


def is_pcs(code: str) -> bool:
    """True for a normalised code shaped like PCS (no dot; more than 3 characters or not a CM
    category). A 3-character code such as ``B20`` counts as CM."""
    return "." not in code and (len(code) > 3 or not CM_RE.match(code))


def _try_normalize(code: str, system: System = "auto") -> Optional[str]:
    try:
        return normalize_code(code, system)
    except (CodeError, ValueError):
        return None


def is_valid_cm(code: str) -> bool:
    """True when ``code`` (any case, dotted or not) is an ICD-10-CM category or (sub)code in
    ``simple_icd_10_cm``'s code set; blocks (``E08-E13``) and chapters are not codes."""
    c = _try_normalize(code, "cm")
    if c is None or not _cm.is_valid_item(c):
        return False
    return bool(_cm.is_category_or_subcategory(c))


def describe(code: str, mimic_descriptions: Optional[Mapping[str, str]] = None) -> str:
    """Description of ``code``: MIMIC's table when given and it has the code, else
    ``simple_icd_10_cm`` (CM only), else ``""`` (also for malformed codes)."""
    c = _try_normalize(code, "auto")
    if c is None:
        return ""
    if mimic_descriptions:
        for key in (c, c.replace(".", ""), str(code).strip()):
            d = mimic_descriptions.get(key)
            if d:
                return str(d)
    if not is_pcs(c) and _cm.is_valid_item(c):
        return str(_cm.get_description(c))
    return ""


def category(code: str) -> str:
    """The 3-character category (CM ``E11.9`` -> ``E11``; PCS: the table, ``0DTJ4ZZ`` -> ``0DT``)."""
    c = normalize_code(code, "auto")
    return c[:3]


def ancestors(code: str, blocks: bool = True) -> list[str]:
    """Ancestors of ``code``, nearest first.

    CM codes known to ``simple_icd_10_cm``: its ancestors (subcategories, category, then block and
    chapter when ``blocks``). Unknown CM codes (older code sets, placeholders such as ``W19.XXX``):
    the shorter prefixes down to the category, then the known ancestors of the nearest known one.
    PCS codes: the prefixes down to the 3-character table (down to 1 character when ``blocks``).
    """
    c = normalize_code(code, "auto")
    if is_pcs(c):
        stop = 1 if blocks else 3
        return [c[:n] for n in range(len(c) - 1, stop - 1, -1)]
    if _cm.is_valid_item(c):
        out = list(_cm.get_ancestors(c))
    else:
        head, _, tail = c.partition(".")
        out = []
        for n in range(len(tail) - 1, -1, -1):
            prefix = f"{head}.{tail[:n]}" if n else head
            out.append(prefix)
            if _cm.is_valid_item(prefix):
                out.extend(_cm.get_ancestors(prefix))
                break
    out = list(dict.fromkeys(a for a in out if a != c))  # a block can share its category's name (C7A)
    if not blocks:
        out = [a for a in out if "-" not in a and not a.isdigit()]
    return out


def descriptions(codes: Iterable[str], mimic_descriptions: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
    """Table ``code, description`` for the distinct ``codes`` (first-seen order)."""
    seen = list(dict.fromkeys(str(c) for c in codes))
    return pd.DataFrame(
        {"code": seen, "description": [describe(c, mimic_descriptions) for c in seen]},
        columns=["code", "description"],
    )


def load_mimic_descriptions(path: str | Path, system: Optional[Literal["cm", "pcs"]] = None) -> dict[str, str]:
    """ICD-10 descriptions from MIMIC-IV's ``hosp/d_icd_diagnoses.csv.gz`` (or
    ``d_icd_procedures.csv.gz``): columns ``icd_code, icd_version, long_title``; rows with
    ``icd_version == 10`` are kept, keyed by the normalised code. ``system`` defaults to ``pcs``
    when the file name contains ``procedures``, else ``cm``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if system is None:
        system = "pcs" if "procedure" in path.name.lower() else "cm"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start} of a block)") from None
    missing = [c for c in ("icd_code", "icd_version", "long_title") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (has {list(table.columns)})")
    out: dict[str, str] = {}
    for i, (code, version, title) in enumerate(
        zip(table["icd_code"], table["icd_version"], table["long_title"])
    ):
        if str(version).strip() != "10":
            continue
        try:
            out[normalize_code(code, system)] = str(title)
        except CodeError as exc:
            raise DataError(f"{path} row {i + 2}: {exc}") from None
    return out
