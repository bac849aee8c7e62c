"""Text of the synthetic notes: the template grammar (literal text, ``{slot}`` or ``{slot:kind}``,
inline choices ``{a|b|c}`` (nestable), number ranges ``{lo~hi}``), sentences and blocks as pieces
``[text, marks]``, and the rendering of a planned note with its span offsets.

Spans are recorded while the text is built, never searched for; :func:`render_note` checks that each
covers exactly the text it was recorded from.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Iterable

from rationale_kit.core.text import count_words


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


def template_slots(nodes: Iterable[tuple], out: list | None = None) -> list[tuple[str, str | None]]:
    out = [] if out is None else out
    for node in nodes:
        if node[0] == "slot":
            out.append((node[1], node[2]))
        elif node[0] == "choice":
            for alt in node[1]:
                template_slots(alt, out)
    return out


# pieces: [text, marks]; marks: tuple of (code, tag), tag "mention" | "evidence" | "d:<kind>"
def _emit(out: list, text: str, marks: tuple = ()) -> None:
    if not text:
        return
    if not marks and out and not out[-1][1]:
        out[-1][0] += text
    else:
        out.append([text, marks])


def render_pieces(nodes: tuple, rng: random.Random, slot_fn: Callable, out: list) -> list:
    for node in nodes:
        kind = node[0]
        if kind == "lit":
            _emit(out, node[1])
        elif kind == "choice":
            alts = node[1]
            render_pieces(alts[rng.randrange(len(alts))], rng, slot_fn, out)
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


def render_plain(nodes: tuple, rng: random.Random, slot_fn: Callable | None = None) -> str:
    fn = slot_fn or (lambda name, kind: [[f"{{{name}}}", ()]])
    return "".join(p[0] for p in render_pieces(nodes, rng, fn, []))


SECTIONS = (
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
LIST_STYLE = {"allergies": "plain", "cc": "plain", "procedures": "plain", "pmh": "dash", "exam": "plain",
               "results": "plain", "meds_adm": "num", "meds_dis": "num", "disposition": "plain",
               "dx": "plain", "condition": "plain", "followup": "plain"}


class Sent:
    """A sentence or list line: pieces ``[text, marks]`` and the codes whose sentence span it is."""

    __slots__ = ("pieces", "codes", "words")

    def __init__(self, pieces: list, codes: Iterable[str] = ()):
        self.pieces = pieces
        self.codes = tuple(dict.fromkeys(codes))
        self.words = count_words("".join(p[0] for p in pieces))


class Block:
    __slots__ = ("items", "head", "tail", "style", "head_sep", "closed")

    def __init__(self, style: str, head: int = 0, head_sep: str = " "):
        self.items: list[Sent] = []
        self.head = head  # leading items that stay first
        self.tail = 0  # trailing items that stay last
        self.closed = False  # no random insertions
        self.style = style  # para | plain | dash | num
        self.head_sep = head_sep  # separator after the leading items of a paragraph


def render_note(preamble: str, sections: dict[str, list[Block]], compact: bool) -> tuple[str, list, list]:
    """The note text with its spans ``(code, start, end, granularity)`` and distractors ``(code, start,
    end, kind)`` (character offsets), from the preamble and the sections' blocks (``compact``: only
    sections that carry something get a title)."""
    parts: list[str] = []
    pos = 0
    spans: list[tuple[str, int, int, str]] = []
    distractors: list[tuple[str, int, int, str]] = []
    expected: list[tuple[int, int, str]] = []

    def put(s: str) -> None:
        nonlocal pos
        parts.append(s)
        pos += len(s)

    put(preamble)
    first = True
    for name, title in SECTIONS:
        blocks = [b for b in sections[name] if b.items]
        if compact and not blocks:
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
