"""The embedded default corpus: a deterministic generator of SYNTHETIC discharge summaries.

There is no openly licensed English clinical text with ICD-10 codes and human rationale spans, so
the workbook ships this generator. Every note, code and "human" span it produces is synthetic:
written by templates from the lexicon in ``lexicon/`` (beside this module) (codes, evidence, filler prose).

What it can show: that pipelines, metrics and learning methods behave as they should on notes that
look like discharge summaries - coding models learn codes from explicit mentions, medications and
lab values; rationale metrics reward spans that match the generator's evidence and punish negated,
family-history and ruled-out mentions; guided learning moves attention towards evidence; long notes
put some evidence beyond 512 tokens. Relative comparisons between methods on it are meaningful only
as sanity checks.

What it cannot show: absolute performance on real notes. The vocabulary is small, the evidence is
cleaner and more regular than in MIMIC, and the "human" spans are exactly what the generator wrote
(no annotator disagreement). No number computed on it estimates performance on MIMIC or any real
clinical text.

Design (parameters in :class:`rationale_kit.core.config.EmbeddedCorpus`):

- codes: the first ``n_codes`` codes of ``codes.yaml`` (billable ICD-10-CM, checked with
  simple-icd-10-cm), sampled per note with long-tailed weights, co-occurrence (``related``),
  mutually exclusive siblings (``group``/``excludes``) and prerequisites (``requires``);
- each assigned code is evidenced explicitly (mentions in several sections, supporting facts),
  indirectly (``indirect_rate``: only medications, labs, findings) or not at all
  (``no_evidence_rate``); ``typo_rate`` of mentions and facts carry a typo;
- distractors (``distractor_rate`` per note): negated, family-history, ruled-out, resolved
  mentions of codes the note does NOT carry; recorded in :attr:`Corpus.distractors`, never gold;
- gold spans at three granularities, recorded while the text is built (never searched for):
  ``mention`` (the diagnosis words), ``evidence`` (a medication with its dose, a lab value with its
  number, a finding, a procedure), ``sentence`` (the sentence or list line carrying either);
- lengths: log-normal around ``sqrt(min_words * max_words)`` words with a tail of long notes, kept
  within ``[min_words, max_words]`` words (``\\w+`` words, as :mod:`rationale_kit.core.text` counts).

The same seed gives the same corpus byte for byte: only ``random.Random`` seeded from strings is
used, and no set or hash order is iterated.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import yaml

from rationale_kit.core.config import EmbeddedCorpus
from rationale_kit.core.records import SPAN_COLUMNS, DataError
from rationale_kit.core.text import WORD_RE

LEXICON_DIR = Path(__file__).resolve().parent / "lexicon"
LEXICON_FILES = ("codes.yaml", "templates.yaml", "filler.yaml")

GRANULARITIES = ("mention", "evidence", "sentence")
EVIDENCE_KINDS = ("med", "lab", "finding", "procedure", "symptom", "history")
CODE_KINDS = ("chronic", "acute", "status", "social")
PLACEMENTS = ("hpi", "pmh", "course", "results", "meds", "dx", "instructions", "social", "allergy")
MENTION_PLACEMENTS = ("hpi", "pmh", "course", "dx", "instructions", "social", "allergy")
DISTRACTOR_SECTIONS = ("hpi", "course", "results", "pmh", "family", "social")
DOC_COLUMNS = ["note_id", "text", "codes", "split", "annotated", "fewshot"]
DISTRACTOR_COLUMNS = ["note_id", "code", "start", "end", "kind"]
PAIR_COLUMNS = ["note_id", "code", "evidence"]

_CODE_KEYS = {
    "code", "kind", "weight", "topics", "group", "excludes", "requires", "sex", "related", "mentions",
    "evidence", "contexts", "where", "complaints", "indirect", "distractor_kinds", "distractor_forms",
    "distractors",
}
_FACT_SLOTS = {"he", "his", "him"}
_CONTEXT_SLOTS = _FACT_SLOTS | {"mention", "evidence", "person", "age", "year"}
_GENERIC_SLOTS = _CONTEXT_SLOTS | {"relative", "his_rel", "history", "complaint", "title", "day", "ros"}


class LexiconError(DataError):
    """The lexicon is malformed; the message names the file, the code and the key."""


# --------------------------------------------------------------------------------------------
# templates: literal text, {slot} or {slot:kind}, inline choices {a|b|c} (nestable), {lo~hi}
# --------------------------------------------------------------------------------------------
_NUM_RE = re.compile(r"^(-?\d+(?:\.\d+)?)~(-?\d+(?:\.\d+)?)$")
_SLOT_RE = re.compile(r"^([A-Za-z_]+)(?::([a-z]+))?$")
_TEMPLATE_CACHE: dict[str, tuple] = {}


def _match_brace(s: str, i: int) -> int:
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unmatched '{'")


def _split_top(s: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for j, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:j])
            start = j + 1
    parts.append(s[start:])
    return parts


def _parse(s: str) -> tuple:
    nodes: list[tuple] = []
    buf: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "{":
            j = _match_brace(s, i)
            if buf:
                nodes.append(("lit", "".join(buf)))
                buf = []
            nodes.append(_classify(s[i + 1:j]))
            i = j + 1
        elif ch == "}":
            raise ValueError("unmatched '}'")
        else:
            buf.append(ch)
            i += 1
    if buf:
        nodes.append(("lit", "".join(buf)))
    return tuple(nodes)


def _classify(inner: str) -> tuple:
    parts = _split_top(inner, "|")
    if len(parts) > 1:
        return ("choice", tuple(_parse(p) for p in parts))
    m = _NUM_RE.match(inner)
    if m:
        lo, hi = m.group(1), m.group(2)
        dec = max(len(x.split(".")[1]) if "." in x else 0 for x in (lo, hi))
        if float(lo) > float(hi):
            raise ValueError(f"number range {{{inner}}} has lo > hi")
        return ("num", float(lo), float(hi), dec)
    m = _SLOT_RE.match(inner)
    if m:
        name = m.group(1)
        return ("slot", name.lower(), m.group(2), name[0].isupper())
    raise ValueError(f"cannot read {{{inner}}} (expected a slot, {{a|b}} choices or a {{lo~hi}} range)")


def parse_template(src: str) -> tuple:
    """Parse (and cache) a template; raises ``ValueError`` on bad syntax."""
    nodes = _TEMPLATE_CACHE.get(src)
    if nodes is None:
        nodes = _parse(src)
        _TEMPLATE_CACHE[src] = nodes
    return nodes


def _template_slots(nodes: Iterable[tuple], out: list | None = None) -> list[tuple[str, str | None]]:
    out = [] if out is None else out
    for node in nodes:
        if node[0] == "slot":
            out.append((node[1], node[2]))
        elif node[0] == "choice":
            for alt in node[1]:
                _template_slots(alt, out)
    return out


# pieces: [text, marks]; marks: tuple of (code, tag), tag "mention" | "evidence" | "d:<kind>"
def _emit(out: list, text: str, marks: tuple = ()) -> None:
    if not text:
        return
    if not marks and out and not out[-1][1]:
        out[-1][0] += text
    else:
        out.append([text, marks])


def _render(nodes: tuple, rng: random.Random, slot_fn: Callable, out: list) -> list:
    for node in nodes:
        kind = node[0]
        if kind == "lit":
            _emit(out, node[1])
        elif kind == "choice":
            alts = node[1]
            _render(alts[rng.randrange(len(alts))], rng, slot_fn, out)
        elif kind == "num":
            lo, hi, dec = node[1], node[2], node[3]
            if dec == 0:
                _emit(out, str(rng.randint(int(lo), int(hi))))
            else:
                _emit(out, f"{rng.uniform(lo, hi):.{dec}f}")
        else:
            pieces = slot_fn(node[1], node[2])
            if node[3] and pieces and pieces[0][0]:
                first = pieces[0]
                pieces = [[first[0][0].upper() + first[0][1:], first[1]]] + list(pieces[1:])
            for text, marks in pieces:
                _emit(out, text, tuple(marks))
    return out


def _plain(nodes: tuple, rng: random.Random, slot_fn: Callable | None = None) -> str:
    fn = slot_fn or (lambda name, kind: [[f"{{{name}}}", ()]])
    return "".join(p[0] for p in _render(nodes, rng, fn, []))


# --------------------------------------------------------------------------------------------
# lexicon
# --------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise LexiconError(f"{path}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise LexiconError(f"{path}: cannot read ({exc.strerror})") from None


def _strings(value: Any, where: str, min_len: int = 0) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise LexiconError(f"{where}: expected a list of non-empty strings, got {value!r}")
    if len(value) < min_len:
        raise LexiconError(f"{where}: need at least {min_len} entries, got {len(value)}")
    return tuple(value)


def _check_template(src: str, allowed: set[str], where: str) -> tuple:
    try:
        nodes = parse_template(src)
    except ValueError as exc:
        raise LexiconError(f"{where}: template {src!r}: {exc}") from None
    for name, _kind in _template_slots(nodes):
        if name not in allowed:
            raise LexiconError(f"{where}: template {src!r}: unknown slot {{{name}}} (allowed: {sorted(allowed)})")
    return nodes


def _validate_code(raw: Any, i: int, where: str, icd: Any) -> dict:
    if not isinstance(raw, dict):
        raise LexiconError(f"{where}: codes[{i}]: expected a mapping, got {type(raw).__name__}")
    code = raw.get("code")
    if not isinstance(code, str) or not code:
        raise LexiconError(f"{where}: codes[{i}]: missing key 'code'")
    w = f"{where}: code {code}"
    unknown = sorted(set(raw) - _CODE_KEYS)
    if unknown:
        raise LexiconError(f"{w}: unknown key {unknown[0]!r} (allowed: {sorted(_CODE_KEYS)})")
    for key in ("kind", "weight", "mentions", "evidence", "contexts", "where"):
        if key not in raw:
            raise LexiconError(f"{w}: missing key {key!r}")
    if not icd.is_valid_item(code):
        raise LexiconError(f"{w}: key 'code': {code!r} is not a valid ICD-10-CM code")
    if not icd.is_leaf(code):
        raise LexiconError(f"{w}: key 'code': {code!r} is not billable (it has subcodes)")
    if raw["kind"] not in CODE_KINDS:
        raise LexiconError(f"{w}: key 'kind': {raw['kind']!r} is not one of {list(CODE_KINDS)}")
    weight = raw["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise LexiconError(f"{w}: key 'weight': expected a positive number, got {weight!r}")
    mentions = _strings(raw["mentions"], f"{w}: key 'mentions'", 3)
    if len({m.lower() for m in mentions}) != len(mentions):
        raise LexiconError(f"{w}: key 'mentions': duplicate forms")
    ev = raw["evidence"]
    if not isinstance(ev, dict):
        raise LexiconError(f"{w}: key 'evidence': expected a mapping kind -> list of facts")
    evidence: dict[str, tuple[str, ...]] = {}
    for kind, facts in ev.items():
        if kind not in EVIDENCE_KINDS:
            raise LexiconError(f"{w}: key 'evidence': unknown kind {kind!r} (allowed: {list(EVIDENCE_KINDS)})")
        evidence[kind] = _strings(facts, f"{w}: key 'evidence.{kind}'", 1)
        for f in evidence[kind]:
            _check_template(f, _FACT_SLOTS, f"{w}: key 'evidence.{kind}'")
    if sum(len(v) for v in evidence.values()) < 2:
        raise LexiconError(f"{w}: key 'evidence': need at least 2 supporting facts")
    contexts = _strings(raw["contexts"], f"{w}: key 'contexts'", 2)
    for c in contexts:
        nodes = _check_template(c, _CONTEXT_SLOTS, f"{w}: key 'contexts'")
        slots = _template_slots(nodes)
        if not any(n in ("mention", "evidence") for n, _ in slots):
            raise LexiconError(f"{w}: key 'contexts': template {c!r} has neither {{mention}} nor {{evidence}}")
        for n, k in slots:
            if n == "evidence" and k is not None and k not in evidence:
                raise LexiconError(f"{w}: key 'contexts': template {c!r} asks for {{evidence:{k}}} "
                                   f"but the code has no {k!r} evidence")
    where_ = _strings(raw["where"], f"{w}: key 'where'", 1)
    for p in where_:
        if p not in PLACEMENTS:
            raise LexiconError(f"{w}: key 'where': unknown placement {p!r} (allowed: {list(PLACEMENTS)})")
    if not any(p in MENTION_PLACEMENTS for p in where_):
        raise LexiconError(f"{w}: key 'where': needs a placement that names the diagnosis {list(MENTION_PLACEMENTS)}")
    related = raw.get("related") or {}
    if not isinstance(related, dict):
        raise LexiconError(f"{w}: key 'related': expected a mapping code -> probability")
    for rc, p in related.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise LexiconError(f"{w}: key 'related': probability of {rc!r} must be in [0, 1], got {p!r}")
    sex = raw.get("sex")
    if sex not in (None, "M", "F"):
        raise LexiconError(f"{w}: key 'sex': expected M or F, got {sex!r}")
    indirect = raw.get("indirect", True)
    if not isinstance(indirect, bool):
        raise LexiconError(f"{w}: key 'indirect': expected true/false, got {indirect!r}")
    group = raw.get("group")
    if group is not None and not isinstance(group, str):
        raise LexiconError(f"{w}: key 'group': expected a string, got {group!r}")
    distractors = []
    for j, d in enumerate(raw.get("distractors") or []):
        dw = f"{w}: key 'distractors[{j}]'"
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("text"), str):
            raise LexiconError(f"{dw}: expected a mapping with 'kind' and 'text'")
        bad = sorted(set(d) - {"kind", "text", "section"})
        if bad:
            raise LexiconError(f"{dw}: unknown key {bad[0]!r}")
        nodes = _check_template(d["text"], _GENERIC_SLOTS, dw)
        if not any(n == "mention" for n, _ in _template_slots(nodes)):
            raise LexiconError(f"{dw}: template {d['text']!r} needs a {{mention}} slot")
        if d.get("section") is not None and d["section"] not in DISTRACTOR_SECTIONS:
            raise LexiconError(f"{dw}: key 'section': {d['section']!r} is not one of {list(DISTRACTOR_SECTIONS)}")
        distractors.append({"kind": d["kind"], "text": d["text"], "section": d.get("section")})
    entry = {
        "code": code,
        "description": icd.get_description(code),
        "kind": raw["kind"],
        "weight": float(weight),
        "topics": _strings(raw.get("topics") or [code], f"{w}: key 'topics'"),
        "group": group,
        "excludes": _strings(raw.get("excludes") or [], f"{w}: key 'excludes'"),
        "requires": _strings(raw.get("requires") or [], f"{w}: key 'requires'"),
        "sex": sex,
        "related": tuple((str(k), float(v)) for k, v in related.items()),
        "mentions": mentions,
        "evidence": evidence,
        "contexts": contexts,
        "where": where_,
        "complaints": _strings(raw.get("complaints") or [], f"{w}: key 'complaints'"),
        "indirect": indirect,
        "distractor_kinds": _strings(raw.get("distractor_kinds") or [], f"{w}: key 'distractor_kinds'"),
        "distractor_forms": _strings(raw.get("distractor_forms") or [], f"{w}: key 'distractor_forms'"),
        "distractors": tuple(distractors),
    }
    return entry


_TEMPLATE_KEYS = {
    "hpi_opening": ("with_history", "without_history"),
    "indirect": EVIDENCE_KINDS,
    "course_header": None,
    "instructions_mention": None,
    "instructions_med": None,
    "distractors": ("negated", "family", "ruled_out", "resolved"),
    "distractor_sections": None,
    "results": ("lab", "finding"),
}
_FILLER_KEYS = (
    "complaints", "procedures", "allergies", "hpi", "ros", "ros_templates", "vitals", "exam", "results",
    "course", "course_day", "transitional_header", "transitional", "course_opening", "instructions",
    "instructions_closing", "followup", "social", "family", "meds", "disposition", "condition", "pmh",
)


def _validate_templates(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise LexiconError(f"{where}: top level must be a mapping")
    out: dict[str, Any] = {}
    for key, sub in _TEMPLATE_KEYS.items():
        if key not in raw:
            raise LexiconError(f"{where}: missing key {key!r}")
        if key == "distractor_sections":
            secs = raw[key]
            if not isinstance(secs, dict):
                raise LexiconError(f"{where}: key 'distractor_sections': expected a mapping kind -> sections")
            out[key] = {}
            for k, v in secs.items():
                out[key][k] = _strings(v, f"{where}: key 'distractor_sections.{k}'", 1)
                for s in out[key][k]:
                    if s not in DISTRACTOR_SECTIONS:
                        raise LexiconError(f"{where}: key 'distractor_sections.{k}': unknown section {s!r}")
            continue
        if sub is None:
            out[key] = _strings(raw[key], f"{where}: key {key!r}", 1)
            for t in out[key]:
                _check_template(t, _GENERIC_SLOTS, f"{where}: key {key!r}")
            continue
        if not isinstance(raw[key], dict):
            raise LexiconError(f"{where}: key {key!r}: expected a mapping with keys {list(sub)}")
        out[key] = {}
        for k in sub:
            if k not in raw[key]:
                raise LexiconError(f"{where}: key '{key}.{k}' is missing")
            out[key][k] = _strings(raw[key][k], f"{where}: key '{key}.{k}'", 1)
            for t in out[key][k]:
                _check_template(t, _GENERIC_SLOTS, f"{where}: key '{key}.{k}'")
    for kind, templates in out["distractors"].items():
        for t in templates:
            if not any(n == "mention" for n, _ in _template_slots(parse_template(t))):
                raise LexiconError(f"{where}: key 'distractors.{kind}': template {t!r} needs a {{mention}} slot")
        if kind not in out["distractor_sections"]:
            raise LexiconError(f"{where}: key 'distractor_sections': no sections for distractor kind {kind!r}")
    return out


def _validate_filler(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise LexiconError(f"{where}: top level must be a mapping")
    out: dict[str, Any] = {}
    for key in _FILLER_KEYS:
        if key not in raw:
            raise LexiconError(f"{where}: missing key {key!r}")
        if key == "exam":
            if not isinstance(raw[key], dict) or not raw[key]:
                raise LexiconError(f"{where}: key 'exam': expected a mapping system -> lines")
            out[key] = {}
            for system, lines in raw[key].items():
                out[key][system] = _strings(lines, f"{where}: key 'exam.{system}'", 1)
                for t in out[key][system]:
                    _check_template(t, _GENERIC_SLOTS, f"{where}: key 'exam.{system}'")
            continue
        out[key] = _strings(raw[key], f"{where}: key {key!r}", 1)
        for t in out[key]:
            _check_template(t, _GENERIC_SLOTS, f"{where}: key {key!r}")
    return out


_LEXICON_CACHE: dict[tuple, dict] = {}


def _lexicon_key(path: str | Path | None) -> tuple:
    files = [LEXICON_DIR / n for n in LEXICON_FILES]
    if path is not None:
        p = Path(path)
        files += [p / n for n in LEXICON_FILES] if p.is_dir() else [p]
    stamp = []
    for f in files:
        try:
            st = f.stat()
            stamp.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((str(f), None, None))
    return (None if path is None else str(Path(path).resolve()), tuple(stamp))


def load_lexicon(path: str | Path | None = None) -> dict:
    """Load and validate the lexicon.

    ``path`` is ``None`` (the packaged ``lexicon/`` (beside this module)), a folder holding ``codes.yaml``
    (and optionally ``templates.yaml``, ``filler.yaml``), or one YAML file with a ``codes`` list
    (and optionally ``version``, ``templates``, ``filler``). Parts not given come from the
    packaged lexicon. Raises :class:`LexiconError` naming the file, the code and the key when
    something is malformed or a code is not a billable ICD-10-CM code.

    Returns ``{"version", "digest", "source", "codes": [entry, ...], "by_code": {code: entry},
    "templates": {...}, "filler": {...}}``; the order of ``codes`` is the lexicon's order.
    """
    key = _lexicon_key(path)
    if key in _LEXICON_CACHE:
        return _LEXICON_CACHE[key]
    lex = _load_lexicon(path)
    _LEXICON_CACHE[key] = lex
    return lex


def _load_lexicon(path: str | Path | None) -> dict:
    import simple_icd_10_cm as icd

    parts: dict[str, tuple[Any, str, bytes]] = {}

    def from_dir(folder: Path, names: Iterable[str]) -> None:
        for name in names:
            p = folder / name
            if p.exists():
                parts[name] = (_read_yaml(p), str(p), p.read_bytes())

    if path is None:
        from_dir(LEXICON_DIR, LEXICON_FILES)
    else:
        path = Path(path)
        if path.is_dir():
            from_dir(path, LEXICON_FILES)
            if "codes.yaml" not in parts:
                raise LexiconError(f"{path}: no codes.yaml in this folder")
        elif path.exists():
            raw = _read_yaml(path)
            if not isinstance(raw, dict) or "codes" not in raw:
                raise LexiconError(f"{path}: expected a mapping with a 'codes' list")
            blob = path.read_bytes()
            parts["codes.yaml"] = ({"version": raw.get("version"), "codes": raw["codes"]}, str(path), blob)
            for key, name in (("templates", "templates.yaml"), ("filler", "filler.yaml")):
                if key in raw:
                    parts[name] = (raw[key], f"{path} ({key})", b"")
        else:
            raise LexiconError(f"{path}: lexicon not found")
        if path.is_file():
            extra = sorted(set(raw) - {"version", "codes", "templates", "filler"})
            if extra:
                raise LexiconError(f"{path}: unknown top-level key {extra[0]!r} (allowed: codes, version, "
                                   "templates, filler)")
        from_dir(LEXICON_DIR, [n for n in LEXICON_FILES if n not in parts])

    codes_raw, codes_where, _ = parts["codes.yaml"]
    if not isinstance(codes_raw, dict) or not isinstance(codes_raw.get("codes"), list):
        raise LexiconError(f"{codes_where}: expected a mapping with a 'codes' list")
    extra = sorted(set(codes_raw) - {"version", "codes", "templates", "filler"})
    if extra:
        raise LexiconError(f"{codes_where}: unknown top-level key {extra[0]!r} (allowed: codes, version, "
                           "templates, filler)")
    version = codes_raw.get("version")
    if version is None:
        version = "custom"
    if not isinstance(version, (str, int, float)):
        raise LexiconError(f"{codes_where}: key 'version': expected a string, got {version!r}")
    entries = [_validate_code(r, i, codes_where, icd) for i, r in enumerate(codes_raw["codes"])]
    if not entries:
        raise LexiconError(f"{codes_where}: key 'codes': the list is empty")
    by_code: dict[str, dict] = {}
    seen_forms: dict[str, str] = {}
    for e in entries:
        if e["code"] in by_code:
            raise LexiconError(f"{codes_where}: code {e['code']}: duplicate entry")
        by_code[e["code"]] = e
        for m in e["mentions"]:
            other = seen_forms.get(m.lower())
            if other is not None:
                raise LexiconError(f"{codes_where}: code {e['code']}: key 'mentions': form {m!r} "
                                   f"is also a mention of {other}")
            seen_forms[m.lower()] = e["code"]
    for e in entries:
        w = f"{codes_where}: code {e['code']}"
        for key in ("excludes", "requires"):
            for c in e[key]:
                if c not in by_code:
                    raise LexiconError(f"{w}: key {key!r}: {c!r} is not a code of the lexicon")
        for c, _p in e["related"]:
            if c not in by_code:
                raise LexiconError(f"{w}: key 'related': {c!r} is not a code of the lexicon")
            if c == e["code"]:
                raise LexiconError(f"{w}: key 'related': a code cannot be related to itself")
    templates = _validate_templates(parts["templates.yaml"][0], parts["templates.yaml"][1])
    filler = _validate_filler(parts["filler.yaml"][0], parts["filler.yaml"][1])
    for e in entries:
        for k in e["distractor_kinds"]:
            if k not in templates["distractors"]:
                raise LexiconError(f"{codes_where}: code {e['code']}: key 'distractor_kinds': unknown kind {k!r} "
                                   f"(allowed: {sorted(templates['distractors'])})")
        for d in e["distractors"]:
            if d["section"] is None and d["kind"] not in templates["distractor_sections"]:
                raise LexiconError(f"{codes_where}: code {e['code']}: key 'distractors': kind {d['kind']!r} "
                                   "has no default section; give 'section'")
    digest = hashlib.sha256()
    for name in LEXICON_FILES:
        digest.update(name.encode())
        digest.update(parts[name][2] if parts[name][2] else yaml.safe_dump(parts[name][0], sort_keys=True).encode())
    return {
        "version": str(version),
        "digest": digest.hexdigest(),
        "source": codes_where,
        "codes": entries,
        "by_code": by_code,
        "templates": templates,
        "filler": filler,
    }


# --------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """A generated corpus.

    - ``docs``: ``note_id, text, codes`` (sorted list), ``split`` (train|val|test), ``annotated``
      (True for the test notes: the evaluation set), ``fewshot`` (True for the ``n_fewshot_pool``
      training notes reserved as few-shot examples, chosen so that each code has up to
      :data:`FEWSHOT_PER_CODE` of them; ``annotated`` is False for these);
    - ``spans``: gold spans (:data:`rationale_kit.core.records.SPAN_COLUMNS`, ``source == "human"``) of
      EVERY note, granularities ``mention``, ``evidence``, ``sentence``;
    - ``codes``: ``code, description, frequency`` (training notes carrying the code);
    - ``lexicon_version``: ``<version>+<digest of the lexicon files>``;
    - ``distractors``: ``note_id, code, start, end, kind``: the words that name a code the note
      does NOT carry (negated, family history, ruled out, resolved, prophylaxis);
    - ``pairs``: ``note_id, code, evidence`` with evidence ``explicit | indirect | none``.
    """

    docs: pd.DataFrame
    spans: pd.DataFrame
    codes: pd.DataFrame
    lexicon_version: str
    distractors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DISTRACTOR_COLUMNS))
    pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIR_COLUMNS))


_SECTIONS = (
    ("allergies", "Allergies:"),
    ("cc", "Chief Complaint:"),
    ("procedures", "Major Surgical or Invasive Procedure:"),
    ("hpi", "History of Present Illness:"),
    ("pmh", "Past Medical History:"),
    ("social", "Social History:"),
    ("family", "Family History:"),
    ("exam", "Physical Exam:"),
    ("results", "Pertinent Results:"),
    ("course", "Brief Hospital Course:"),
    ("meds_adm", "Medications on Admission:"),
    ("meds_dis", "Discharge Medications:"),
    ("disposition", "Discharge Disposition:"),
    ("dx", "Discharge Diagnosis:"),
    ("condition", "Discharge Condition:"),
    ("instructions", "Discharge Instructions:"),
    ("followup", "Followup Instructions:"),
)
_LIST_STYLE = {"allergies": "plain", "cc": "plain", "procedures": "plain", "pmh": "dash", "exam": "plain",
               "results": "plain", "meds_adm": "num", "meds_dis": "num", "disposition": "plain",
               "dx": "plain", "condition": "plain", "followup": "plain"}
_FILLER_WEIGHTS = (("hpi", 0.10), ("exam", 0.13), ("results", 0.12), ("instructions", 0.10), ("social", 0.03),
                   ("family", 0.02), ("pmh", 0.02), ("meds", 0.03), ("course", 0.45))
_RELATIVES = (("mother", "her"), ("father", "his"), ("sister", "her"), ("brother", "his"),
              ("maternal grandmother", "her"), ("paternal grandfather", "his"), ("maternal aunt", "her"),
              ("paternal uncle", "his"))
_ORAL_RE = re.compile(r"\b(PO|subcutaneously|inhaled|weekly|nightly|at bedtime)\b")
_TYPO_WORD_RE = re.compile(r"[A-Za-z]{5,}")
_SCALES = ((1.0, False), (0.6, False), (0.3, False), (0.0, False), (0.6, True), (0.0, True))


def _n_words(text: str) -> int:
    return len(WORD_RE.findall(text))


class _Sent:
    """A sentence or list line: pieces ``[text, marks]`` and the codes whose sentence span it is."""

    __slots__ = ("pieces", "codes", "words")

    def __init__(self, pieces: list, codes: Iterable[str] = ()):
        self.pieces = pieces
        self.codes = tuple(dict.fromkeys(codes))
        self.words = _n_words("".join(p[0] for p in pieces))


class _Block:
    __slots__ = ("items", "head", "tail", "style", "head_sep", "closed")

    def __init__(self, style: str, head: int = 0, head_sep: str = " "):
        self.items: list[_Sent] = []
        self.head = head  # leading items that stay first
        self.tail = 0  # trailing items that stay last
        self.closed = False  # no random insertions
        self.style = style  # para | plain | dash | num
        self.head_sep = head_sep  # separator after the leading items of a paragraph


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _typo(rng: random.Random, text: str) -> str:
    words = [m.span() for m in _TYPO_WORD_RE.finditer(text) if not m.group().isupper()]
    if not words:
        return text
    a, b = words[rng.randrange(len(words))]
    w = text[a:b]
    i = rng.randrange(1, len(w) - 2)
    op = rng.randrange(3)
    if op == 0:
        w2 = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    elif op == 1:
        w2 = w[:i] + w[i + 1:]
    else:
        w2 = w[:i] + w[i] + w[i:]
    return text[:a] + w2 + text[b:]


class _Model:
    """What the generator derives from the lexicon for the codes in use."""

    def __init__(self, lex: dict, n_codes: int):
        if n_codes < 1:
            raise DataError(f"n_codes must be >= 1, got {n_codes}")
        if n_codes > len(lex["codes"]):
            raise DataError(f"n_codes = {n_codes} but the lexicon has {len(lex['codes'])} codes")
        self.lex = lex
        self.entries = lex["codes"][:n_codes]
        self.used = [e["code"] for e in self.entries]
        self.by = {e["code"]: e for e in self.entries}
        used = set(self.used)
        self.conflicts: dict[str, set[str]] = {c: set() for c in self.used}
        groups: dict[str, list[str]] = {}
        for e in self.entries:
            if e["group"]:
                groups.setdefault(e["group"], []).append(e["code"])
            for x in e["excludes"]:
                if x in used:
                    self.conflicts[e["code"]].add(x)
                    self.conflicts[x].add(e["code"])
        for members in groups.values():
            for a in members:
                self.conflicts[a].update(m for m in members if m != a)
        self.related = {e["code"]: [(c, p) for c, p in e["related"] if c in used] for e in self.entries}
        self.fact_codes: dict[str, list[str]] = {}
        for e in self.entries:
            for facts in e["evidence"].values():
                for f in facts:
                    self.fact_codes.setdefault(f, [])
                    if e["code"] not in self.fact_codes[f]:
                        self.fact_codes[f].append(e["code"])
        self.distractor_options: dict[str, list[tuple[str, str, str | None]]] = {}
        generic = lex["templates"]["distractors"]
        for e in self.entries:
            opts = [(d["kind"], d["text"], d["section"]) for d in e["distractors"]]
            for k in e["distractor_kinds"]:
                opts += [(k, t, None) for t in generic[k]]
            if opts:
                self.distractor_options[e["code"]] = opts


class _Note:
    """Plans one note (codes, evidence, distractors, filler) and renders it with its spans."""

    def __init__(self, model: _Model, cfg: EmbeddedCorpus, rng: random.Random):
        self.m, self.cfg, self.rng = model, cfg, rng
        self.lex = model.lex
        self.T = model.lex["templates"]
        self.F = model.lex["filler"]

    # ---- slots -------------------------------------------------------------------------------
    def _pron(self, name: str) -> str:
        male = self.sex == "M"
        return {"he": "he" if male else "she", "his": "his" if male else "her",
                "him": "him" if male else "her"}[name]

    def _basic_slot(self, name: str, state: dict) -> list:
        rng = self.rng
        if name in ("he", "his", "him"):
            return [[self._pron(name), ()]]
        if name == "person":
            return [[rng.choice(("man", "gentleman", "male") if self.sex == "M" else ("woman", "lady", "female")), ()]]
        if name == "title":
            return [["Mr." if self.sex == "M" else "Ms.", ()]]
        if name == "age":
            return [[str(self.age), ()]]
        if name == "year":
            return [[str(rng.randint(1995, 2022)), ()]]
        if name == "day":
            return [[str(state.get("day", 2)), ()]]
        if name == "relative":
            rel, pron = _RELATIVES[rng.randrange(len(_RELATIVES))]
            state["his_rel"] = pron
            return [[rel, ()]]
        if name == "his_rel":
            return [[state.get("his_rel", "their"), ()]]
        if name == "complaint":
            return [[self.complaint, ()]]
        if name == "ros":
            items = rng.sample(self.F["ros"], min(len(self.F["ros"]), rng.randint(2, 4)))
            return [[", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0], ()]]
        raise DataError(f"template slot {{{name}}} cannot be filled here")

    def mention_piece(self, code: str, tag: str = "mention", forms: tuple | None = None) -> list:
        forms = forms or self.m.by[code]["mentions"]
        text = forms[self.rng.randrange(len(forms))]
        if self.rng.random() < self.cfg.typo_rate:
            text = _typo(self.rng, text)
        return [text, ((code, tag),)]

    def fact(self, code: str, kinds: Iterable[str] | None, avoid: set) -> tuple[list, list[str]]:
        """A supporting fact of ``code`` (of one of ``kinds``): its piece and the codes it supports."""
        e = self.m.by[code]
        kinds = [k for k in (kinds or e["evidence"].keys()) if k in e["evidence"]] or list(e["evidence"])
        cands = [f for k in kinds for f in e["evidence"][k]
                 if f not in avoid and not any(c in self.silent for c in self.m.fact_codes[f])]
        if not cands:
            cands = [f for k in kinds for f in e["evidence"][k]]
        fresh = [f for f in cands if f not in self.used_facts]
        f = (fresh or cands)[self.rng.randrange(len(fresh or cands))]
        avoid.add(f)
        self.used_facts.add(f)
        text = self.fact_text.get(f)
        if text is None:
            text = _plain(parse_template(f), self.rng, lambda n, k: self._basic_slot(n, {}))
            self.fact_text[f] = text
        if self.rng.random() < self.cfg.typo_rate:
            text = _typo(self.rng, text)
        codes = [c for c in self.m.fact_codes[f] if c in self.evidenced]
        if code not in codes:
            codes.insert(0, code)
        return [text, tuple((c, "evidence") for c in codes)], codes

    def sentence(self, template: str, code: str | None = None, extra: dict | None = None) -> _Sent:
        codes: list[str] = []
        avoid: set = set()
        state: dict = dict(extra or {})

        def slot(name: str, kind: str | None) -> list:
            if name == "mention":
                if state.get("distractor"):
                    d_code, d_kind, forms = state["distractor"]
                    return [self.mention_piece(d_code, "d:" + d_kind, forms)]
                codes.append(code)
                return [self.mention_piece(code)]
            if name == "evidence":
                piece, cs = self.fact(code, [kind] if kind else state.get("kinds"), avoid)
                codes.extend(cs)
                return [piece]
            if name == "history":
                items = state["history"]
                out: list = []
                for i, c in enumerate(items):
                    if i:
                        out.append([" and " if i == len(items) - 1 else ", ", ()])
                    out.append(self.mention_piece(c))
                    codes.append(c)
                return out
            return self._basic_slot(name, state)

        pieces = _render(parse_template(template), self.rng, slot, [])
        return _Sent(pieces, codes)

    def plain(self, template: str, extra: dict | None = None) -> _Sent:
        return self.sentence(template, None, extra)

    # ---- structure ---------------------------------------------------------------------------
    def _prefix_words(self, block: _Block) -> int:
        return 1 if block.style == "num" else 0

    def add(self, section: str, sent: _Sent, block: _Block | None = None, pos: str = "random") -> None:
        blocks = self.sections[section]
        if block is None:
            if not blocks:
                blocks.append(_Block("para" if section not in _LIST_STYLE else _LIST_STYLE[section]))
            if pos == "random":
                open_blocks = [b for b in blocks if not b.closed] or blocks
                block = open_blocks[self.rng.randrange(len(open_blocks))]
            else:
                block = blocks[-1]
        if pos == "end":
            block.items.append(sent)
        elif pos == "start":
            block.items.insert(0, sent)
        else:
            hi = len(block.items) - block.tail
            lo = min(block.head, hi)
            block.items.insert(self.rng.randint(lo, hi), sent)
        self.words += sent.words + self._prefix_words(block)

    def new_block(self, section: str, style: str = "para", at_end: bool = True, head: int = 0,
                  head_sep: str = " ") -> _Block:
        b = _Block(style, head, head_sep)
        blocks = self.sections[section]
        if at_end or not blocks:
            blocks.append(b)
        else:
            blocks.insert(self.rng.randint(1 if section == "course" else 0, len(blocks)), b)
        return b

    # ---- planning ----------------------------------------------------------------------------
    def sample_codes(self) -> list[str]:
        rng, m, cfg = self.rng, self.m, self.cfg
        k = 1 + _poisson(rng, max(cfg.codes_per_note_mean - 1.0, 0.0))
        k = min(k, max(1, int(round(3 * cfg.codes_per_note_mean))))
        chosen: list[str] = []
        blocked: set[str] = set()

        def allowed(c: str) -> bool:
            e = m.by[c]
            if c in blocked or c in chosen or (e["sex"] and e["sex"] != self.sex):
                return False
            return not e["requires"] or any(r in chosen for r in e["requires"])

        queue: list[str] = []
        while len(chosen) < k:
            cand = None
            while queue:
                c = queue.pop(0)
                if allowed(c):
                    cand = c
                    break
            if cand is None:
                pool = [c for c in m.used if allowed(c)]
                if not pool:
                    break
                cand = rng.choices(pool, weights=[m.by[c]["weight"] for c in pool])[0]
            chosen.append(cand)
            blocked.update(m.conflicts[cand])
            for r, p in m.related[cand]:
                if rng.random() < p:
                    queue.append(r)
        return chosen

    def plan(self, codes: list[str], modes: dict[str, str], scale: float, compact: bool = False) -> None:
        """Lay out skeleton and evidence. ``scale`` thins the optional placements; ``compact`` (for
        very short notes) leaves out the sections that carry nothing."""
        rng, T, F = self.rng, self.T, self.F
        self.words = 0
        self.compact = compact
        self.sections: dict[str, list[_Block]] = {name: [] for name, _ in _SECTIONS}
        self.used_facts: set = set()
        self.fact_text: dict[str, str] = {}
        self.evidenced = {c for c in codes if modes[c] != "none"}
        self.silent = {c for c in codes if modes[c] == "none"}
        explicit = [c for c in codes if modes[c] == "explicit"]
        acute = [c for c in explicit if self.m.by[c]["kind"] == "acute"]
        self.principal = acute[rng.randrange(len(acute))] if acute else None
        p_entry = self.m.by[self.principal] if self.principal else None
        comp = p_entry["complaints"] if p_entry and p_entry["complaints"] else F["complaints"]
        self.complaint = comp[rng.randrange(len(comp))]

        # fixed skeleton ----------------------------------------------------------------------
        if compact:
            self.preamble = f"Sex:   {self.sex}\n \n"
        else:
            for name, title in _SECTIONS:
                self.words += _n_words(title)
            self.preamble = (f"Name:  ___                     Unit No:   ___\n \nAdmission Date:  ___              "
                             f"Discharge Date:   ___\n \nDate of Birth:  ___             Sex:   {self.sex}\n \n"
                             f"Service: MEDICINE\n \n")
        self.words += _n_words(self.preamble)
        self.exam_state = {"round": 0, "queue": []}
        self.fstate: dict = {}
        for name, style, head in (("allergies", "plain", 0), ("cc", "plain", 0), ("procedures", "plain", 0),
                                  ("hpi", "para", 1), ("pmh", "dash", 0), ("social", "para", 0),
                                  ("family", "para", 0), ("exam", "plain", 1), ("results", "plain", 0),
                                  ("course", "para", 1), ("meds_adm", "num", 0), ("meds_dis", "num", 0),
                                  ("disposition", "plain", 0), ("dx", "plain", 2), ("condition", "plain", 0),
                                  ("instructions", "para", 2), ("followup", "plain", 0)):
            self.new_block(name, style, head=head)
        dx_block = self.sections["dx"][0]
        self.add("cc", _Sent([[self.complaint[0].upper() + self.complaint[1:], ()]]))
        self.add("dx", _Sent([["PRIMARY DIAGNOSIS:", ()]]), dx_block, pos="end")
        self.add("instructions", self.plain(F["instructions"][0]), pos="end")
        if not compact:
            self.add("procedures", self.plain(rng.choice(F["procedures"])))
            self.add("exam", self.plain("ADMISSION EXAM:"), pos="end")
            self.add("course", self.plain(rng.choice(F["course_opening"])), pos="end")
            self.add("disposition", self.plain(rng.choice(F["disposition"])))
            self.add("condition", self.plain(rng.choice(F["condition"])))
            self.add("instructions", self.plain(F["instructions"][1]), pos="end")
            for closing in rng.sample(F["instructions_closing"], min(2, len(F["instructions_closing"]))):
                self.add("instructions", self.plain(closing), pos="end")
            self.sections["instructions"][0].tail = min(2, len(F["instructions_closing"]))
            self.add("followup", self.plain(rng.choice(F["followup"])))
        else:
            self.sections["instructions"][0].head = 1
            self.sections["course"][0].head = 0

        # evidence ----------------------------------------------------------------------------
        history: list[str] = []
        secondary_dx: list[_Sent] = []
        primary_dx: _Sent | None = None
        med_lines: list[tuple[_Sent, bool]] = []  # (line, on admission too)
        for c in codes:
            mode, e = modes[c], self.m.by[c]
            if mode == "none":
                continue
            if mode == "explicit":
                chosen = self._choose_placements(c, scale)
            else:
                chosen = self._choose_indirect(c, scale)
            for place in chosen:
                if place == "pmh":
                    kinds = [k for k in ("lab", "finding", "procedure") if k in e["evidence"]]
                    if kinds and rng.random() < 0.3:
                        self.add("pmh", self.sentence("{mention} ({evidence})", c, {"kinds": kinds}))
                    else:
                        self.add("pmh", self.sentence("{mention}", c))
                elif place == "hpi_list":
                    history.append(c)
                elif place == "hpi":
                    self.add("hpi", self.sentence(self._context(c, mention=True), c))
                elif place == "course":
                    self._course_paragraph(c, scale)
                elif place == "dx":
                    s = self.sentence("{mention}", c)
                    if c == self.principal:
                        primary_dx = s
                    else:
                        secondary_dx.append(s)
                elif place == "instructions":
                    if rng.random() < 0.5 and any(_ORAL_RE.search(f) for f in e["evidence"].get("med", ())):
                        self.add("instructions", self._oral_med_sentence(c, rng.choice(T["instructions_med"])))
                    else:
                        self.add("instructions", self.sentence(rng.choice(T["instructions_mention"]), c))
                elif place == "social":
                    if mode == "explicit":
                        tpl = self._context(c, mention=True)
                    else:
                        tpl = self._indirect_template(c, "history")
                    self.add("social", self.sentence(tpl, c, {"kinds": ["history"]}))
                elif place == "allergy":
                    self.add("allergies", self.sentence("{mention}", c))
                elif place == "meds":
                    oral = e["kind"] != "acute"
                    line = self._med_line(c, oral_only=not oral)
                    if line is not None:
                        med_lines.append((line, oral))
                elif place == "results":
                    kinds = [k for k in ("lab", "finding") if k in e["evidence"]]
                    kind = kinds[rng.randrange(len(kinds))]
                    self.add("results", self.sentence(rng.choice(T["results"][kind]), c, {"kinds": [kind]}))
                elif place == "indirect":
                    self._indirect_sentence(c)
        if history:
            tpl = rng.choice(T["hpi_opening"]["with_history"])
            opening = self.sentence(tpl, None, {"history": history})
        else:
            opening = self.plain(rng.choice(T["hpi_opening"]["without_history"]))
        self.add("hpi", opening, self.sections["hpi"][0], pos="start")
        dx_block.items.insert(1, primary_dx or _Sent([[self.complaint[0].upper() + self.complaint[1:], ()]]))
        self.words += dx_block.items[1].words
        if secondary_dx:
            self.add("dx", _Sent([["SECONDARY DIAGNOSES:", ()]]), dx_block, pos="end")
            for s in secondary_dx:
                self.add("dx", s, dx_block, pos="end")
        for line, on_admission in med_lines:
            if on_admission:
                self.add("meds_adm", _Sent([list(p) for p in line.pieces], line.codes))
            self.add("meds_dis", line)
        if not self.sections["allergies"][0].items:
            self.add("allergies", self.plain(rng.choice(F["allergies"])))
        if not compact:
            for sec, pool in (("pmh", "pmh"), ("social", "social"), ("family", "family"), ("meds_adm", "meds"),
                              ("meds_dis", "meds"), ("results", "results")):
                if not self.sections[sec][0].items:
                    got = self._filler_sentence(pool, self.fstate)
                    if got is not None:
                        self.add(sec, got[1])
            self.add("exam", self.plain(rng.choice(F["vitals"])), pos="end")
        self._distractors(codes)
        if compact:  # only the sections that carry something get a title
            for name, title in _SECTIONS:
                if any(b.items for b in self.sections[name]):
                    self.words += _n_words(title)

    def _choose_placements(self, c: str, scale: float) -> list[str]:
        rng, e = self.rng, self.m.by[c]
        kind, where, principal = e["kind"], e["where"], c == self.principal
        p: dict[str, float] = {}
        if "pmh" in where and kind != "acute":
            p["pmh"] = 0.85
        if "hpi" in where:
            if kind == "chronic":
                p["hpi_list"] = 0.45
            else:
                p["hpi"] = 1.0 if principal else (0.35 if kind == "acute" else 0.3)
        if "course" in where:
            p["course"] = {"acute": 0.8, "chronic": 0.5, "status": 0.45, "social": 0.3}[kind]
            if principal:
                p["course"] = 1.0
        if "dx" in where:
            p["dx"] = 1.0 if principal else {"acute": 0.85, "chronic": 0.6, "status": 0.4, "social": 0.6}[kind]
        if "instructions" in where:
            p["instructions"] = 0.6 if principal else 0.15
        if "social" in where:
            p["social"] = 1.0
        if "allergy" in where:
            p["allergy"] = 1.0
        if "meds" in where and "med" in e["evidence"]:
            p["meds"] = 0.85 if kind != "acute" else 0.4
        if "results" in where and ("lab" in e["evidence"] or "finding" in e["evidence"]):
            p["results"] = 0.6
        chosen = [k for k, v in p.items() if rng.random() < v * scale or (k in ("social", "allergy") and scale > 0)]
        names_it = ("pmh", "hpi_list", "hpi", "course", "dx", "instructions", "social", "allergy")
        if not any(k in names_it for k in chosen):
            must = "dx" if "dx" in where else next(k for k in where if k in MENTION_PLACEMENTS)
            chosen.append("hpi" if must == "hpi" and kind != "chronic" else ("hpi_list" if must == "hpi" else must))
        return chosen

    def _choose_indirect(self, c: str, scale: float) -> list[str]:
        rng, e = self.rng, self.m.by[c]
        kinds = e["evidence"]
        p: dict[str, float] = {}
        if "med" in kinds and any(_ORAL_RE.search(f) for f in kinds["med"]):
            p["meds"] = 0.9
        if "lab" in kinds or "finding" in kinds:
            p["results"] = 0.6
        if "history" in kinds and "social" in e["where"]:
            p["social"] = 0.9
        p["indirect"] = 0.6
        chosen = [k for k, v in p.items() if rng.random() < v * scale]
        if not chosen:
            chosen = ["meds"] if "meds" in p and rng.random() < 0.5 else ["indirect"]
        return chosen

    def _context(self, c: str, mention: bool | None = None) -> str:
        ctx = self.m.by[c]["contexts"]
        if mention is not None:
            sub = [t for t in ctx if any(n == "mention" for n, _ in _template_slots(parse_template(t))) == mention]
            ctx = sub or ctx
        return ctx[self.rng.randrange(len(ctx))]

    def _indirect_template(self, c: str, kind: str) -> str:
        e = self.m.by[c]
        own = [t for t in e["contexts"]
               if not any(n == "mention" for n, _ in _template_slots(parse_template(t)))
               and all(k == kind for n, k in _template_slots(parse_template(t)) if n == "evidence")]
        pool = list(self.T["indirect"][kind]) + own
        return pool[self.rng.randrange(len(pool))]

    def _indirect_sentence(self, c: str) -> None:
        e = self.m.by[c]
        kinds = list(e["evidence"])
        kind = kinds[self.rng.randrange(len(kinds))]
        s = self.sentence(self._indirect_template(c, kind), c, {"kinds": [kind]})
        if kind == "symptom":
            self.add("hpi", s)
        elif kind == "history" and self.sections["social"]:
            self.add("social", s)
        else:
            self.add("course", s)

    def _med_line(self, c: str, oral_only: bool) -> _Sent | None:
        e = self.m.by[c]
        facts = [f for f in e["evidence"].get("med", ()) if not oral_only or _ORAL_RE.search(f)]
        if not facts:
            return None
        return self._oral_med_sentence(c, "{evidence}", facts)

    def _oral_med_sentence(self, c: str, template: str, facts: list | None = None) -> _Sent:
        e = self.m.by[c]
        facts = facts or [f for f in e["evidence"]["med"] if _ORAL_RE.search(f)]
        avoid = {f for f in e["evidence"]["med"] if f not in facts}
        codes: list[str] = []

        def slot(name: str, kind: str | None) -> list:
            if name == "evidence":
                piece, cs = self.fact(c, ["med"], avoid)
                codes.extend(cs)
                return [piece]
            return self._basic_slot(name, {})

        pieces = _render(parse_template(template), self.rng, slot, [])
        if pieces and pieces[0][0][:1].islower() and template.startswith("{evidence}"):
            pieces[0] = [pieces[0][0][0].upper() + pieces[0][0][1:], pieces[0][1]]
        return _Sent(pieces, codes)

    def _course_paragraph(self, c: str, scale: float) -> None:
        rng = self.rng
        header = rng.random() < 0.75
        block = self.new_block("course", "para", at_end=c != self.principal, head=1 if header else 0,
                               head_sep="\n")
        if c == self.principal:  # the principal problem comes right after the opening paragraph
            self.sections["course"].remove(block)
            self.sections["course"].insert(1, block)
        if header:
            self.add("course", self.sentence(rng.choice(self.T["course_header"]), c), block, pos="end")
        n = 1 + (rng.random() < 0.5 * scale) + (c == self.principal and rng.random() < 0.5 * scale)
        ctx = list(self.m.by[c]["contexts"])
        first = self._context(c, mention=True) if not header else ctx[rng.randrange(len(ctx))]
        rest = [t for t in ctx if t != first]
        rng.shuffle(rest)
        for t in ([first] + rest)[:n]:
            self.add("course", self.sentence(t, c), block, pos="end")

    def _distractors(self, codes: list[str]) -> None:
        rng, m = self.rng, self.m
        n = _poisson(rng, self.cfg.distractor_rate)
        if n == 0:
            return
        topics = {t for c in codes for t in m.by[c]["topics"]}
        blocked = set(codes)
        for c in codes:
            blocked |= m.conflicts[c]
        pool = [c for c in m.used if c in m.distractor_options and c not in blocked
                and not (set(m.by[c]["topics"]) & topics)
                and (m.by[c]["sex"] is None or m.by[c]["sex"] == self.sex)]
        for _ in range(n):
            if not pool:
                return
            d = rng.choices(pool, weights=[math.sqrt(m.by[c]["weight"]) for c in pool])[0]
            pool.remove(d)
            e = m.by[d]
            kind, text, section = rng.choice(m.distractor_options[d])
            section = section or rng.choice(self.T["distractor_sections"][kind])
            forms = e["distractor_forms"] or e["mentions"]
            s = self.sentence(text, d, {"distractor": (d, kind, forms)})
            self.add(section, s)

    # ---- filler ------------------------------------------------------------------------------
    def _filler_sentence(self, section: str, state: dict) -> tuple[str, _Sent] | None:
        rng, F = self.rng, self.F
        bag = state.setdefault(section, [])
        if section == "exam":
            ex = self.exam_state
            if not ex["queue"]:
                if ex["round"] >= 2:
                    return None
                ex["round"] += 1
                systems = list(F["exam"])
                ex["queue"] = ([] if ex["round"] == 1 else ["DISCHARGE EXAM:", rng.choice(F["vitals"])]) + [
                    rng.choice(F["exam"][s]) for s in systems]
            return "exam", self.plain(ex["queue"].pop(0))
        if section == "course":
            if state.get("day_block") is not None and rng.random() < 0.25:
                state["day"] = state.get("day", 1) + 1 + (rng.random() < 0.3)
                days = state.setdefault("left_days", [])
                if not days:
                    days.extend(range(len(F["course_day"])))
                i = days.pop(rng.randrange(len(days)))
                return "day", self.plain(F["course_day"][i], {"day": state["day"]})
            pool = F["course"]
        elif section == "hpi":
            if not state.get("ros") and rng.random() < 0.25:
                state["ros"] = True
                return "hpi", self.plain(rng.choice(F["ros_templates"]))
            pool = F["hpi"]
        elif section == "results":
            if len(bag) >= 30:
                return None
            bag.append(1)
            pool = F["results"]
        elif section == "instructions":
            pool = F["instructions"][2:]
        else:
            pool = F[section]
        # draw without replacement until the pool is used up; only course prose then repeats
        if "left_" + section not in state:
            state["left_" + section] = list(range(len(pool)))
        left = state["left_" + section]
        if not left:
            if section not in ("course", "hpi", "results"):
                return None
            left.extend(range(len(pool)))
        i = left.pop(rng.randrange(len(left)))
        return section, self.plain(pool[i])

    def fill(self, target: int) -> None:
        rng, cfg = self.rng, self.cfg
        budget = max(0, target - self.words)
        state = self.fstate
        course_budget = budget * 0.45
        if self.compact:
            course_budget = 0.0
        if course_budget > 400:  # a day-by-day paragraph somewhere after the opening
            state["day_block"] = self.new_block("course", "para", at_end=False)
        if course_budget > 300:  # transitional issues close the course
            b = self.new_block("course", "para", at_end=True, head=1, head_sep="\n")
            self.add("course", self.plain(rng.choice(self.F["transitional_header"])), b, pos="end")
            for t in rng.sample(self.F["transitional"], min(len(self.F["transitional"]), rng.randint(2, 4))):
                self.add("course", self.plain(t), b, pos="end")
            b.closed = True  # filler goes elsewhere
        leftover = 0.0
        for section, weight in _FILLER_WEIGHTS:
            goal = budget * weight + (leftover if section == "course" else 0.0)
            added = 0
            while added < goal:
                got = self._filler_sentence(section, state)
                if got is None:
                    break
                kind, sent = got
                target_sec = section if section != "meds" else ("meds_adm", "meds_dis")[rng.randrange(2)]
                if self.compact and not any(b.items for b in self.sections[target_sec]):
                    break
                extra = 1 if target_sec in ("meds_adm", "meds_dis") else 0
                if self.words + sent.words + extra > cfg.max_words:
                    break
                if kind == "day":
                    self.add("course", sent, state["day_block"], pos="end")
                elif kind == "exam":
                    self.add("exam", sent, self.sections["exam"][0], pos="end")
                else:
                    self.add(target_sec, sent)
                added += sent.words + extra
            leftover += max(0.0, goal - added)
        while self.words < cfg.min_words:  # lengths below min_words only when max_words forbids more
            _, sent = self._filler_sentence("course", state)
            if self.compact and not any(b.items for b in self.sections["course"]):
                self.words += _n_words("Brief Hospital Course:")
            self.add("course", sent)

    # ---- rendering ---------------------------------------------------------------------------
    def render(self) -> tuple[str, list, list]:
        parts: list[str] = []
        pos = 0
        spans: list[tuple[str, int, int, str]] = []
        distractors: list[tuple[str, int, int, str]] = []
        expected: list[tuple[int, int, str]] = []

        def put(s: str) -> None:
            nonlocal pos
            parts.append(s)
            pos += len(s)

        put(self.preamble)
        first = True
        for name, title in _SECTIONS:
            blocks = [b for b in self.sections[name] if b.items]
            if self.compact and not blocks:
                continue
            put(("" if first else "\n \n") + title + ("\n" if blocks else ""))
            first = False
            for bi, block in enumerate(blocks):
                if bi:
                    put("\n\n")
                for ii, sent in enumerate(block.items):
                    if ii:
                        put((block.head_sep if ii == block.head else " ") if block.style == "para" else "\n")
                    if block.style == "dash":
                        put("- ")
                    elif block.style == "num":
                        put(f"{ii + 1}. ")
                    s0 = pos
                    for text, marks in sent.pieces:
                        a = pos
                        put(text)
                        for code, tag in marks:
                            if tag.startswith("d:"):
                                distractors.append((code, a, pos, tag[2:]))
                                expected.append((a, pos, text))
                            else:
                                spans.append((code, a, pos, tag))
                                expected.append((a, pos, text))
                    for code in sent.codes:
                        spans.append((code, s0, pos, "sentence"))
                        expected.append((s0, pos, "".join(p[0] for p in sent.pieces)))
        put("\n")
        text = "".join(parts)
        # checked at generation time: every span covers exactly the text it was recorded from
        for a, b, piece in expected:
            if not (0 <= a < b <= len(text)) or text[a:b] != piece:
                raise RuntimeError(f"corpus generator: span [{a}, {b}) does not cover {piece!r}")
        return text, spans, distractors


def _target_words(rng: random.Random, cfg: EmbeddedCorpus) -> int:
    lo, hi = cfg.min_words, cfg.max_words
    if rng.random() < 0.07:  # the tail of long stays
        t = hi - (hi - 0.55 * hi) * rng.random() ** 2
    else:
        t = rng.lognormvariate(math.log(math.sqrt(lo * hi)), 0.42)
    return int(min(hi, max(lo, t)))


def _check_cfg(cfg: EmbeddedCorpus) -> None:
    for name in ("n_train", "n_val", "n_test", "n_fewshot_pool"):
        if getattr(cfg, name) < 0:
            raise DataError(f"data.embedded.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.n_fewshot_pool > cfg.n_train:
        raise DataError(f"data.embedded.n_fewshot_pool ({cfg.n_fewshot_pool}) exceeds n_train ({cfg.n_train})")
    if not 0 < cfg.min_words <= cfg.max_words:
        raise DataError(f"data.embedded: need 0 < min_words <= max_words, got {cfg.min_words}, {cfg.max_words}")
    for name in ("no_evidence_rate", "indirect_rate", "typo_rate"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise DataError(f"data.embedded.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.no_evidence_rate + cfg.indirect_rate > 1.0:
        raise DataError("data.embedded: no_evidence_rate + indirect_rate must be <= 1")
    if cfg.distractor_rate < 0 or cfg.codes_per_note_mean < 1:
        raise DataError("data.embedded: need distractor_rate >= 0 and codes_per_note_mean >= 1")


def _generate_note(model: _Model, cfg: EmbeddedCorpus, seed: int, index: int):
    rng = random.Random(f"rationale-kit-corpus:{seed}:{index}")
    note = _Note(model, cfg, rng)
    note.sex = "F" if rng.random() < 0.5 else "M"
    note.age = rng.randint(28, 94)
    codes = note.sample_codes()
    modes: dict[str, str] = {}
    for c in codes:
        u = rng.random()
        if u < cfg.no_evidence_rate:
            modes[c] = "none"
        elif u < cfg.no_evidence_rate + cfg.indirect_rate and model.by[c]["indirect"]:
            modes[c] = "indirect"
        else:
            modes[c] = "explicit"
    target = _target_words(rng, cfg)
    for scale, compact in _SCALES:  # fewer placements when the evidence alone would pass max_words
        note.plan(codes, modes, scale, compact)
        if note.words <= cfg.max_words:
            break
    note.fill(target)
    text, spans, distractors = note.render()
    return text, sorted(codes), spans, distractors, modes


FEWSHOT_PER_CODE = 5  # the paper's few-shot prompts hold 5 annotated examples per code


def _fewshot_pool(modes: list[dict[str, str]], size: int, codes: list[str], rng: random.Random,
                  per_code: int = FEWSHOT_PER_CODE) -> set[int]:
    """Training notes reserved as few-shot examples: first, for each code from the rarest up, notes
    that evidence it (explicitly or indirectly) until it has ``FEWSHOT_PER_CODE`` of them; then
    random notes up to ``size``. Rare codes therefore get examples when the pool allows."""
    order = rng.sample(range(len(modes)), len(modes))
    evidenced = [{c for c, m in md.items() if m != "none"} for md in modes]
    freq = {c: sum(c in ev for ev in evidenced) for c in codes}
    chosen: list[int] = []
    taken: set[int] = set()
    have = {c: 0 for c in codes}
    for code in sorted(codes, key=lambda c: (freq[c], codes.index(c))):
        for i in order:
            if len(chosen) >= size or have[code] >= per_code:
                break
            if i not in taken and code in evidenced[i]:
                chosen.append(i)
                taken.add(i)
                for c in evidenced[i]:
                    have[c] += 1
    for i in order:
        if len(chosen) >= size:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return taken


def generate_corpus(cfg: EmbeddedCorpus, seed: int, lexicon: dict | str | Path | None = None) -> Corpus:
    """Generate the synthetic corpus of ``cfg`` (see the module docstring). Deterministic in
    ``(cfg, seed, lexicon)``. ``lexicon``: a :func:`load_lexicon` result or a path (default: packaged)."""
    _check_cfg(cfg)
    if lexicon is None:
        lexicon = getattr(cfg, "lexicon_path", None)
    lex = lexicon if isinstance(lexicon, dict) else load_lexicon(lexicon)
    model = _Model(lex, cfg.n_codes)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    splits = ["train"] * cfg.n_train + ["val"] * cfg.n_val + ["test"] * cfg.n_test
    notes = [_generate_note(model, cfg, seed, i) for i in range(n)]
    fewshot_idx = _fewshot_pool([notes[i][4] for i in range(cfg.n_train)], cfg.n_fewshot_pool, model.used,
                                random.Random(f"rationale-kit-corpus-fewshot:{seed}"),
                                getattr(cfg, "fewshot_per_code", FEWSHOT_PER_CODE))
    doc_rows, span_rows, dis_rows, pair_rows = [], [], [], []
    for i, (text, codes, spans, distractors, modes) in enumerate(notes):
        nid = f"syn-{i:06d}"
        doc_rows.append((nid, text, codes, splits[i], splits[i] == "test", i in fewshot_idx))
        seen = set()
        for code, a, b, g in sorted(spans, key=lambda s: (s[1], s[2], s[0], GRANULARITIES.index(s[3]))):
            if (code, a, b, g) not in seen:
                seen.add((code, a, b, g))
                span_rows.append((nid, code, a, b, g, "human"))
        for code, a, b, kind in sorted(distractors, key=lambda s: (s[1], s[2], s[0])):
            dis_rows.append((nid, code, a, b, kind))
        for c in codes:
            pair_rows.append((nid, c, modes[c]))
    docs = pd.DataFrame(doc_rows, columns=DOC_COLUMNS)
    docs = docs.astype({"annotated": bool, "fewshot": bool})
    spans = pd.DataFrame(span_rows, columns=SPAN_COLUMNS).astype({"start": "int64", "end": "int64"})
    distractors = pd.DataFrame(dis_rows, columns=DISTRACTOR_COLUMNS).astype({"start": "int64", "end": "int64"})
    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS)
    freq: dict[str, int] = {c: 0 for c in model.used}
    for codes, split in zip(docs["codes"], docs["split"]):
        if split == "train":
            for c in codes:
                freq[c] += 1
    codes_frame = pd.DataFrame({"code": model.used,
                                "description": [model.by[c]["description"] for c in model.used],
                                "frequency": [freq[c] for c in model.used]})
    return Corpus(docs=docs, spans=spans, codes=codes_frame,
                  lexicon_version=f"{lex['version']}+{lex['digest'][:10]}",
                  distractors=distractors, pairs=pairs)


def corpus_summary(corpus: Corpus) -> pd.DataFrame:
    """One row per split (and ``all``): documents, annotated, few-shot, distinct codes, codes per
    document, words per document (mean, median, min, max; ``\\w+`` words), gold spans per
    granularity, distractors, and the share of (note, code) pairs evidenced explicitly, indirectly
    or not at all."""
    docs = corpus.docs
    words = docs["text"].map(_n_words)
    split_of = dict(zip(docs["note_id"], docs["split"]))
    spans = corpus.spans.assign(split=corpus.spans["note_id"].map(split_of))
    dis = corpus.distractors.assign(split=corpus.distractors["note_id"].map(split_of))
    pairs = corpus.pairs.assign(split=corpus.pairs["note_id"].map(split_of))
    rows = []
    for split in ["train", "val", "test", "all"]:
        sel = docs["split"] == split if split != "all" else pd.Series(True, index=docs.index)
        if not sel.any():
            continue
        sp = spans if split == "all" else spans[spans["split"] == split]
        pr = pairs if split == "all" else pairs[pairs["split"] == split]
        n_codes = docs.loc[sel, "codes"].map(len)
        row = {
            "split": split,
            "documents": int(sel.sum()),
            "annotated": int(docs.loc[sel, "annotated"].sum()),
            "fewshot": int(docs.loc[sel, "fewshot"].sum()),
            "codes": len({c for cs in docs.loc[sel, "codes"] for c in cs}),
            "codes/doc": round(float(n_codes.mean()), 2),
            "words mean": round(float(words[sel].mean()), 1),
            "words median": float(words[sel].median()),
            "words min": int(words[sel].min()),
            "words max": int(words[sel].max()),
        }
        for g in GRANULARITIES:
            row[f"spans {g}"] = int((sp["granularity"] == g).sum())
        row["distractors"] = int(len(dis if split == "all" else dis[dis["split"] == split]))
        for mode in ("explicit", "indirect", "none"):
            row[f"pairs {mode}"] = round(float((pr["evidence"] == mode).mean()), 3) if len(pr) else 0.0
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
