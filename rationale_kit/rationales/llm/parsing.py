"""Checking and repairing answers: the JSON-schema subset answers are validated against, the cheap
local repair of malformed JSON, and reading a response into quotes per asked code."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Sequence

from rationale_kit.rationales.llm.response import BLOCK_FINISH_REASONS, LLMResponse


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(obj: Any, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Errors of ``obj`` against a small JSON-schema subset (type, properties, required, items,
    additionalProperties, enum, minItems, maxItems, minLength); empty when valid."""
    errors: list[str] = []
    t = schema.get("type")
    if t:
        t = t.lower()
        if t in ("integer", "number"):
            ok = isinstance(obj, (int, float)) and not isinstance(obj, bool) and (t == "number" or float(obj).is_integer())
        else:
            ok = isinstance(obj, _TYPES.get(t, object))
        if not ok:
            return [f"{where}: expected {t}, got {type(obj).__name__}"]
    if "enum" in schema and obj not in schema["enum"]:
        errors.append(f"{where}: {obj!r} not one of {schema['enum']}")
    if isinstance(obj, dict):
        for key in schema.get("required", []):
            if key not in obj:
                errors.append(f"{where}: missing key {key!r}")
        props = schema.get("properties", {})
        for key, value in obj.items():
            if key in props:
                errors += validate(value, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key!r}")
    if isinstance(obj, list):
        if "minItems" in schema and len(obj) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(obj) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(obj):
                errors += validate(v, schema["items"], f"{where}[{i}]")
    if isinstance(obj, str) and "minLength" in schema and len(obj) < schema["minLength"]:
        errors.append(f"{where}: shorter than {schema['minLength']}")
    return errors


def _reshape(obj: Any) -> Any:
    """Cheap fixes of near-miss shapes: a bare list of rationales, or a ``{code: [quotes]}`` map."""
    if isinstance(obj, list):
        return {"rationales": obj}
    if isinstance(obj, dict) and "rationales" not in obj and obj and all(
        isinstance(v, list) and all(isinstance(q, str) for q in v) for v in obj.values()
    ):
        return {"rationales": [{"code": k, "quotes": v} for k, v in obj.items()]}
    return obj


_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.S)


def local_repair(text: str, schema: Mapping[str, Any]) -> Optional[Any]:
    """Try to recover a valid answer from malformed text without calling the model: strip code
    fences and chatter, ignore trailing text, and for a truncated answer cut back to the last
    complete value and close the open brackets. Returns the object, or None."""
    s = text.strip()
    m = _FENCE_RE.search(s)
    if m:
        s = m.group(1).strip()
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if not starts:
        return None
    s = s[min(starts):]
    try:
        obj, _ = json.JSONDecoder().raw_decode(s)
        obj = _reshape(obj)
        if not validate(obj, schema):
            return obj
    except json.JSONDecodeError:
        pass
    # truncated: remember every point where a value ends, with the brackets open there
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []
    in_str = esc = False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                cuts.append((i + 1, "".join(stack)))
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack:
                break
            stack.pop()
            cuts.append((i + 1, "".join(stack)))
            if not stack:
                break
    for pos, open_ in reversed(cuts[-500:]):
        closers = "".join("}" if c == "{" else "]" for c in reversed(open_))
        try:
            obj = _reshape(json.loads(s[:pos] + closers))
        except json.JSONDecodeError:
            continue
        if not validate(obj, schema):
            return obj
    return None


def parse_answer(text: str, schema: Mapping[str, Any]) -> tuple[Any, Optional[str]]:
    """``(object, repaired)`` where ``repaired`` is None or ``"local"``; raises ValueError with the
    problem when the text cannot be made into a valid answer."""
    try:
        obj = json.loads(text)
        errors = validate(obj, schema)
        if not errors:
            return obj, None
        problem = "; ".join(errors[:3])
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON: {exc.msg} at character {exc.pos}"
    fixed = local_repair(text, schema)
    if fixed is not None:
        return fixed, "local"
    raise ValueError(problem)


def code_key(code: str) -> str:
    """Key for matching codes: upper case, no dots or spaces (``e11.9`` == ``E119``)."""
    return re.sub(r"[^0-9A-Z]", "", str(code).upper())


def interpret_response(r: LLMResponse, schema: Mapping[str, Any]) -> tuple[str, Any, Optional[str]]:
    """``(kind, payload, detail)``: ("ok", obj, repaired) | ("blocked", None, reason) |
    ("empty", None, reason) | ("invalid", None, problem)."""
    if r.blocked_reason:
        return "blocked", None, r.blocked_reason
    if not r.text.strip():
        if r.finish_reason in BLOCK_FINISH_REASONS:
            return "blocked", None, r.finish_reason
        return "empty", None, "no candidates" if r.finish_reason is None else f"empty text (finish_reason {r.finish_reason})"
    try:
        obj, repaired = parse_answer(r.text, schema)
    except ValueError as exc:
        trunc = " (answer cut at the output token limit)" if r.finish_reason == "MAX_TOKENS" else ""
        return "invalid", None, f"{exc}{trunc}"
    return "ok", obj, repaired


def quotes_by_code(obj: Any, codes: Sequence[str], max_quotes: Optional[int] = None
                    ) -> tuple[dict[str, list[str]], int, list[str], int]:
    """Asked code -> deduplicated quotes (at most ``max_quotes`` each); quotes for codes not asked
    are dropped and counted, as are quotes past the cap: ``(quotes, dropped, unasked, capped)``."""
    asked = {code_key(c): c for c in codes}
    out: dict[str, list[str]] = {c: [] for c in codes}
    dropped, unasked, capped = 0, [], 0
    for item in obj.get("rationales", []):
        code = asked.get(code_key(item.get("code", "")))
        quotes = [q.strip() for q in item.get("quotes", []) if isinstance(q, str) and q.strip()]
        if code is None:
            dropped += len(quotes)
            unasked.append(str(item.get("code", "")))
            continue
        for q in quotes:
            if q not in out[code]:
                if max_quotes is not None and len(out[code]) >= max_quotes:
                    capped += 1
                    continue
                out[code].append(q)
    return out, dropped, unasked, capped


def reached_codes(obj: Any, codes: Sequence[str]) -> set[str]:
    """The asked codes that an answer object mentions (whatever their quotes)."""
    asked = {code_key(c): c for c in codes}
    items = obj.get("rationales", []) if isinstance(obj, dict) else []
    return {asked[k] for k in (code_key(i.get("code", "")) for i in items if isinstance(i, dict)) if k in asked}
