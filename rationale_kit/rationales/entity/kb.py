"""The entity linker's knowledge base: one concept per ICD-10-CM code, with its aliases.

Titles, inclusion terms and "includes" notes come from ``simple-icd-10-cm`` (FY2026); the
project-written lexicon ``abbreviations.yaml`` (beside this module) adds abbreviations and lay
synonyms. See docs/method/entity.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import yaml

from rationale_kit.core.icd import _cm  # imported lazily on first use
from rationale_kit.core.records import DataError

LEXICON_PATH = Path(__file__).resolve().parent / "abbreviations.yaml"
TOKEN_RE = re.compile(r"\w+")


# --------------------------------------------------------------------------------------------
# text and code keys
# --------------------------------------------------------------------------------------------
def normalize_alias(text: str) -> str:
    """Lower-case ``\\w+`` tokens joined by one space: the key every alias and n-gram is compared
    by (``"Gastro-esophageal reflux"`` -> ``"gastro esophageal reflux"``)."""
    return " ".join(TOKEN_RE.findall(text.lower()))


def case_key(text: str) -> str:
    """``\\w+`` tokens joined by one space, case kept: the key of case-sensitive abbreviations."""
    return " ".join(TOKEN_RE.findall(text))


def kb_code(code: str) -> str:
    """The KB's key for a code: upper case, with the dot added when the dotted form is a valid
    ICD-10-CM item (``e119`` -> ``E11.9``); anything else is kept as it is (no error)."""
    c = str(code).strip().upper()
    if "." not in c and len(c) > 3 and re.match(r"^[A-Z][0-9][0-9A-Z]", c) and _cm.is_valid_item(
        c[:3] + "." + c[3:]
    ):
        c = c[:3] + "." + c[3:]
    return c


def three_char_prefix(code: str) -> str:
    """The first 3 characters of a code without its dots, upper case (``E11.9`` -> ``E11``;
    PCS: the table). Unlike :func:`rationale_kit.core.icd.category`, it never validates, so a
    requested code the KB cannot know (``401.9``, ICD-9) yields a prefix instead of an error."""
    return str(code).replace(".", "")[:3].upper()


# --------------------------------------------------------------------------------------------
# alias variants of ICD terms
# --------------------------------------------------------------------------------------------
_PARENS = re.compile(r"\s*[\(\[]([^\)\]]*)[\)\]]")
_ABBREV_IN_PARENS = re.compile(r"^[A-Z][A-Za-z0-9]{1,7}$")
_QUALIFIER_PART = re.compile(
    r"^(unspecified( \w+)?|uncomplicated|site not specified|site unspecified|not elsewhere "
    r"classified|without .+|unspecified as .+|single episode|initial encounter|nos)$",
    re.IGNORECASE,
)


def _reduce(base: str) -> tuple[str, str]:
    """``base`` (a term without parentheses) with trailing comma-separated qualifiers, ``NOS``,
    "not elsewhere classified" and "without complications" cut; and that without "unspecified"."""
    s = re.sub(r"\bNOS\b", "", base)
    s = re.sub(r",?\s*\b(not elsewhere classified|without complications?)\b", "", s, flags=re.I)
    parts = [p.strip() for p in s.split(",")]
    while len(parts) > 1 and _QUALIFIER_PART.match(parts[-1]):
        parts.pop()
    cut = ", ".join(parts)
    s = re.sub(r"\bunspecified (site|part) of\s+|\bof unspecified (site|part)\b", "", cut, flags=re.I)
    s = re.sub(r"\s*\bunspecified\b", "", s, flags=re.I)
    s = re.sub(r"\s*,(\s*,)+", ",", s).strip(" ,")
    return cut, s


def alias_variants(term: str) -> tuple[list[str], list[str]]:
    """Surface variants of an ICD title or inclusion term, and abbreviations found in it.

    Variants: the term; without its parenthesised/bracketed words ("Essential (primary)
    hypertension" -> "Essential hypertension") and with their words kept ("Essential primary
    hypertension"); each trailing modifier put before the head ("hypertension (arterial)
    (primary)" -> "arterial hypertension", "primary hypertension"); trailing comma-separated
    qualifiers cut ("Pneumonia, unspecified organism" -> "Pneumonia"); ``NOS``, "not elsewhere
    classified", "without complications" and the word "unspecified" removed ("Unspecified atrial
    fibrillation" -> "atrial fibrillation"); a short trailing "without ..." clause cut ("GERD
    without esophagitis" -> "GERD"); hyphens between letters dropped ("gastroesophageal").
    Abbreviations: upper-case words in brackets (``[HFrEF]``, ``(STEMI)``).
    """
    out: list[str] = []
    abbrevs = [
        inner.strip() for inner in _PARENS.findall(term)
        if _ABBREV_IN_PARENS.match(inner.strip()) and sum(ch.isupper() for ch in inner) >= 2
    ]

    def add(s: str) -> None:
        s = re.sub(r"\s+", " ", s).strip(" ,;-")
        if s and normalize_alias(s) and s not in out:
            out.append(s)

    add(term)
    base = _PARENS.sub("", term)
    add(base)
    if _PARENS.search(term):
        # ICD "nonessential modifiers": "(mellitus)" may be read or not; trailing ones such as
        # "hypertension (arterial) (benign)" read as "arterial hypertension"
        add(re.sub(r"[\(\)\[\]]", "", term))
        trailing = re.match(r"^(.*?[^\s\)\]])((\s*\([^\)]*\))+)\s*$", term)
        if trailing and not _PARENS.search(trailing.group(1)):
            for mod in re.findall(r"\(([^\)]*)\)", trailing.group(2))[:8]:
                if not _ABBREV_IN_PARENS.match(mod.strip()) or mod.islower():
                    add(f"{mod.strip()} {trailing.group(1)}")
    cut, s = _reduce(base)
    add(cut)
    add(s)
    # a short trailing "without ..." clause names the default ("GERD without esophagitis"); one
    # with further qualifiers ("without complications in remission") does not
    m = re.search(r"\s+without\s+(.*)$", s, flags=re.I)
    if m and len(m.group(1).split()) <= 4 and not re.search(r"\b(in|with)\b", m.group(1), re.I):
        add(s[: m.start()])
    for v in list(out):  # "gastro-esophageal" -> "gastroesophageal"
        if "-" in v:
            add(re.sub(r"(?<=\w)-(?=\w)", "", v))
    return out, abbrevs


def core_name(term: str) -> str:
    """``term`` without parentheses, qualifiers and "unspecified", normalised."""
    return normalize_alias(_reduce(_PARENS.sub("", term))[1]) or normalize_alias(term)


def _is_default_of(code: str, description: str, parent_description: str) -> bool:
    """Whether ``code`` is the default member of its parent: an "unspecified" code ending in 9
    (the ICD-10-CM convention), or one whose title says the same as the parent's once the
    qualifiers are removed ("Unspecified systolic (congestive) heart failure" under "Systolic
    (congestive) heart failure"). J18.0 "Bronchopneumonia, unspecified organism" is not the
    default of J18 "Pneumonia, unspecified organism"."""
    if code.endswith("9") and "unspecified" in description.lower():
        return True
    return core_name(description) == core_name(parent_description)


# --------------------------------------------------------------------------------------------
# lexicon and concepts
# --------------------------------------------------------------------------------------------
@dataclass
class Concept:
    """One KB entry: a code (or 3-character category), its title and surface forms."""

    code: str
    name: str
    aliases: list[str]  # display forms
    abbreviations: list[str]  # case-sensitive forms harvested from brackets
    is_category: bool = False


def load_abbreviations(path: str | Path = LEXICON_PATH) -> dict:
    """Read the abbreviation/synonym lexicon ``{"abbreviations": [...], "synonyms": [...]}``;
    errors name the file and the entry."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: malformed YAML ({exc})") from None
    out = {"abbreviations": [], "synonyms": []}
    for key in ("abbreviations", "synonyms"):
        for i, entry in enumerate(data.get(key) or []):
            if not isinstance(entry, dict) or not entry.get("forms") or not entry.get("codes"):
                raise DataError(f"{path}: {key}[{i}] needs 'forms' and 'codes' lists")
            out[key].append(
                {
                    "forms": [str(f) for f in entry["forms"]],
                    "codes": [kb_code(c) for c in entry["codes"]],
                    "expansion": str(entry.get("expansion") or ""),
                    "case_sensitive": bool(entry.get("case_sensitive", False)),
                }
            )
    return out


def lexicon_codes(lex: Mapping) -> list[str]:
    """The target codes of every lexicon entry that are valid ICD-10-CM items, in file order."""
    return [c for e in lex["abbreviations"] + lex["synonyms"] for c in e["codes"] if _cm.is_valid_item(c)]


def _cm_description(code: str) -> Optional[str]:
    try:
        return _cm.get_description(code) if _cm.is_valid_item(code) else None
    except Exception:  # pragma: no cover - defensive against package quirks
        return None


def _cm_terms(code: str, includes: bool) -> list[str]:
    terms: list[str] = []
    try:
        terms += list(_cm.get_inclusion_term(code))
        if includes:
            terms += list(_cm.get_includes(code))
    except Exception:  # pragma: no cover
        pass
    return terms


def _default_ancestor_terms(code: str, desc: str) -> list[str]:
    """Titles and inclusion terms of the ancestors ``code`` is the default member of, climbing
    while each level is the default ("unspecified") member of the next."""
    terms: list[str] = []
    c, c_desc = code, desc
    while "." in c:
        p = c[:-1].rstrip(".")
        while "." in p and not _cm.is_valid_item(p):  # skip placeholder levels
            p = p[:-1].rstrip(".")
        if not _cm.is_valid_item(p):
            break
        p_desc = _cm.get_description(p)
        if not _is_default_of(c, c_desc, p_desc):
            break
        terms += [p_desc] + _cm_terms(p, includes=False)
        c, c_desc = p, p_desc
    return terms


def _make_concept(code: str, is_category: bool, descriptions: Mapping[str, str]) -> Optional[Concept]:
    desc = _cm_description(code)
    titles = [t for t in (descriptions.get(code), desc) if t]
    if not titles:
        return None
    leaf = bool(desc) and _cm.is_leaf(code)
    terms = titles + (_cm_terms(code, includes=leaf) if desc else [])
    if desc and not is_category:
        terms += _default_ancestor_terms(code, desc)
    aliases: list[str] = []
    abbrevs: list[str] = []
    for t in terms:
        v, a = alias_variants(t)
        aliases += [x for x in v if x not in aliases]
        abbrevs += [x for x in a if x not in abbrevs]
    return Concept(code, titles[0], aliases, abbrevs, is_category)


def build_concepts(
    codes: Iterable[str],
    descriptions: Optional[Mapping[str, str]] = None,
    include_categories: bool = True,
) -> tuple[dict[str, Concept], list[str]]:
    """One concept per code (and per 3-character category when ``include_categories``).

    Aliases of a code: its title, inclusion terms and (for leaf codes) "includes" notes, each with
    the variants of :func:`alias_variants`. A code that is the default member of its parent
    (:func:`_is_default_of`) also gets the titles and inclusion terms of its parent, and so on up
    while each level is the default of the next (E11.9 gets "Type 2 diabetes
    mellitus"; I50.20 gets "Systolic (congestive) heart failure" but not "Heart failure").
    ``descriptions`` add a title per code (MIMIC's ``d_icd_diagnoses``), the only title for codes simple-icd-10-cm lacks.
    Returns the concepts and the codes that have no title at all (skipped).
    """
    descriptions = {kb_code(k): v for k, v in (descriptions or {}).items()}
    concepts: dict[str, Concept] = {}
    unknown: list[str] = []
    for raw in codes:
        code = kb_code(raw)
        if code in concepts:
            continue
        concept = _make_concept(code, False, descriptions)
        if concept is None:
            unknown.append(code)
            continue
        concepts[code] = concept
    if include_categories:
        for code in list(concepts):
            cat = three_char_prefix(code)
            if cat not in concepts and _cm.is_valid_item(cat):
                concept = _make_concept(cat, True, descriptions)
                if concept is not None:
                    concepts[cat] = concept
    return concepts, unknown


def billable_codes() -> list[str]:
    """Every billable (leaf) ICD-10-CM code (about 74,000)."""
    return [c for c in _cm.get_all_codes(True) if _cm.is_leaf(c)]
