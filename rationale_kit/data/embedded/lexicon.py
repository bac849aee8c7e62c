"""The lexicon of the synthetic corpus (``lexicon/``: codes, templates, filler prose): loading,
validating and caching it. Errors name the file, the code and the key."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import yaml

from rationale_kit.core.records import DataError
from rationale_kit.data.embedded.renderer import parse_template, template_slots


LEXICON_DIR = Path(__file__).resolve().parent / "lexicon"
LEXICON_FILES = ("codes.yaml", "templates.yaml", "filler.yaml")
EVIDENCE_KINDS = ("med", "lab", "finding", "procedure", "symptom", "history")
CODE_KINDS = ("chronic", "acute", "status", "social")
PLACEMENTS = ("hpi", "pmh", "course", "results", "meds", "dx", "instructions", "social", "allergy")
MENTION_PLACEMENTS = ("hpi", "pmh", "course", "dx", "instructions", "social", "allergy")
DISTRACTOR_SECTIONS = ("hpi", "course", "results", "pmh", "family", "social")
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
    for name, _kind in template_slots(nodes):
        if name not in allowed:
            raise LexiconError(f"{where}: template {src!r}: unknown slot {{{name}}} (allowed: {sorted(allowed)})")
    return nodes


def _validate_code(raw: Any, i: int, where: str, icd: Any) -> dict:
    code, w = _check_code_head(raw, i, where, icd)
    mentions = _strings(raw["mentions"], f"{w}: key 'mentions'", 3)
    if len({m.lower() for m in mentions}) != len(mentions):
        raise LexiconError(f"{w}: key 'mentions': duplicate forms")
    evidence = _validate_evidence(raw["evidence"], w)
    contexts = _validate_contexts(raw["contexts"], evidence, w)
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
    distractors = _validate_distractors(raw.get("distractors") or [], w)
    entry = {
        "code": code,
        "description": icd.get_description(code),
        "kind": raw["kind"],
        "weight": float(raw["weight"]),
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


def _check_code_head(raw: Any, i: int, where: str, icd: Any) -> tuple[str, str]:
    """The entry's code (billable ICD-10-CM), its keys, kind and weight; returns ``(code, where)``."""
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
    return code, w


def _validate_evidence(ev: Any, w: str) -> dict[str, tuple[str, ...]]:
    """``kind -> facts`` of one code (at least 2 facts in all)."""
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
    return evidence


def _validate_contexts(raw: Any, evidence: dict, w: str) -> tuple[str, ...]:
    """Context templates of one code: each names the diagnosis or a fact of a kind the code has."""
    contexts = _strings(raw, f"{w}: key 'contexts'", 2)
    for c in contexts:
        nodes = _check_template(c, _CONTEXT_SLOTS, f"{w}: key 'contexts'")
        slots = template_slots(nodes)
        if not any(n in ("mention", "evidence") for n, _ in slots):
            raise LexiconError(f"{w}: key 'contexts': template {c!r} has neither {{mention}} nor {{evidence}}")
        for n, k in slots:
            if n == "evidence" and k is not None and k not in evidence:
                raise LexiconError(f"{w}: key 'contexts': template {c!r} asks for {{evidence:{k}}} "
                                   f"but the code has no {k!r} evidence")
    return contexts


def _validate_distractors(raw: Iterable, w: str) -> list[dict]:
    """A code's own distractor templates (``kind``, ``text`` with a ``{mention}``, optional ``section``)."""
    distractors = []
    for j, d in enumerate(raw):
        dw = f"{w}: key 'distractors[{j}]'"
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("text"), str):
            raise LexiconError(f"{dw}: expected a mapping with 'kind' and 'text'")
        bad = sorted(set(d) - {"kind", "text", "section"})
        if bad:
            raise LexiconError(f"{dw}: unknown key {bad[0]!r}")
        nodes = _check_template(d["text"], _GENERIC_SLOTS, dw)
        if not any(n == "mention" for n, _ in template_slots(nodes)):
            raise LexiconError(f"{dw}: template {d['text']!r} needs a {{mention}} slot")
        if d.get("section") is not None and d["section"] not in DISTRACTOR_SECTIONS:
            raise LexiconError(f"{dw}: key 'section': {d['section']!r} is not one of {list(DISTRACTOR_SECTIONS)}")
        distractors.append({"kind": d["kind"], "text": d["text"], "section": d.get("section")})
    return distractors


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
            if not any(n == "mention" for n, _ in template_slots(parse_template(t))):
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


def load_corpus_lexicon(path: str | Path | None = None) -> dict:
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
    lex = _build_lexicon(path)
    _LEXICON_CACHE[key] = lex
    return lex


def _build_lexicon(path: str | Path | None) -> dict:
    import simple_icd_10_cm as icd

    parts = _lexicon_parts(path)
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
    by_code = _index_codes(entries, codes_where)
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


def _lexicon_parts(path: str | Path | None) -> dict[str, tuple[Any, str, bytes]]:
    """``file name -> (parsed YAML, where, raw bytes)`` of the three lexicon parts: those ``path``
    gives (a folder or one YAML file), the rest from the packaged lexicon."""
    parts: dict[str, tuple[Any, str, bytes]] = {}

    def from_dir(folder: Path, names: Iterable[str]) -> None:
        for name in names:
            p = folder / name
            if p.exists():
                parts[name] = (_read_yaml(p), str(p), p.read_bytes())

    if path is None:
        from_dir(LEXICON_DIR, LEXICON_FILES)
        return parts
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
    return parts


def _index_codes(entries: list[dict], codes_where: str) -> dict[str, dict]:
    """``code -> entry``, checking that codes and mention forms are unique and that ``excludes``,
    ``requires`` and ``related`` name codes of the lexicon."""
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
    return by_code
