"""What each synthetic note contains: its codes, where each code's evidence goes, distractors and
filler up to a target length (the layout in sections and blocks that :mod:`.renderer` turns into text).
See docs/method/data.md."""
from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from typing import Iterable

from rationale_kit.core.config import EmbeddedCorpus
from rationale_kit.core.records import DataError
from rationale_kit.core.text import count_words
from rationale_kit.data.embedded.lexicon import MENTION_PLACEMENTS
from rationale_kit.data.embedded.renderer import (
    LIST_STYLE,
    SECTIONS,
    Block,
    Sent,
    parse_template,
    render_note,
    render_pieces,
    render_plain,
    template_slots,
)


#: Share of a note's filler budget that goes to the hospital course (and decides whether the course
#: gets a day-by-day paragraph and transitional issues).
COURSE_FILLER_SHARE = 0.45
#: Filler budget shares per section, in the order they are filled (they sum to 1).
_FILLER_WEIGHTS = (("hpi", 0.10), ("exam", 0.13), ("results", 0.12), ("instructions", 0.10), ("social", 0.03),
                   ("family", 0.02), ("pmh", 0.02), ("meds", 0.03), ("course", COURSE_FILLER_SHARE))
#: Course filler words above which a day-by-day paragraph, and transitional issues, are written.
DAY_BY_DAY_MIN_WORDS = 400
TRANSITIONAL_MIN_WORDS = 300
#: Results filler lines per note at most; examination rounds (admission, discharge) at most.
MAX_RESULT_LINES = 30
EXAM_ROUNDS = 2
_RELATIVES = (("mother", "her"), ("father", "his"), ("sister", "her"), ("brother", "his"),
              ("maternal grandmother", "her"), ("paternal grandfather", "his"), ("maternal aunt", "her"),
              ("paternal uncle", "his"))
_ORAL_RE = re.compile(r"\b(PO|subcutaneously|inhaled|weekly|nightly|at bedtime)\b")
_TYPO_WORD_RE = re.compile(r"[A-Za-z]{5,}")
_SCALES = ((1.0, False), (0.6, False), (0.3, False), (0.0, False), (0.6, True), (0.0, True))


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


class CodeModel:
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


@dataclass
class _SlotState:
    """What the slots of one sentence share while it is written."""

    distractor: tuple | None = None  # (code, kind, forms): {mention} names this distractor instead
    kinds: list[str] | None = None  # the evidence kinds {evidence} draws from (None: any)
    history: list[str] = field(default_factory=list)  # the codes {history} lists
    day: int = 2  # the hospital day {day} names
    his_rel: str = "their"  # the pronoun of the last {relative} ({his_rel})


@dataclass
class _ExamState:
    """The examination lines still to write: the current round's queue (round 1 admission, 2 discharge)."""

    round: int = 0
    queue: list[str] = field(default_factory=list)


@dataclass
class _FillerState:
    """What filling a note remembers between sentences."""

    left: dict[str, list[int]] = field(default_factory=dict)  # pool -> indices not drawn yet
    day: int = 1  # the last hospital day written
    day_block: Block | None = None  # the day-by-day paragraph of the course, when there is one
    ros_done: bool = False  # the review of systems is written once
    result_lines: int = 0  # results filler lines written


@dataclass
class _Placed:
    """What placing a note's codes collects for the layout after all codes are placed."""

    history: list[str] = field(default_factory=list)  # chronic codes listed in the HPI opening
    secondary_dx: list[Sent] = field(default_factory=list)
    primary_dx: Sent | None = None
    med_lines: list[tuple[Sent, bool]] = field(default_factory=list)  # (line, on admission too)


class _Note:
    """Plans one note (codes, evidence, distractors, filler); :func:`.renderer.render_note` writes it."""

    def __init__(self, model: CodeModel, cfg: EmbeddedCorpus, rng: random.Random, sex: str, age: int):
        self.m, self.cfg, self.rng = model, cfg, rng
        self.sex, self.age = sex, age
        self.lex = model.lex
        self.T = model.lex["templates"]
        self.filler = model.lex["filler"]

    # ---- slots -------------------------------------------------------------------------------
    def _pron(self, name: str) -> str:
        male = self.sex == "M"
        return {"he": "he" if male else "she", "his": "his" if male else "her",
                "him": "him" if male else "her"}[name]

    def _basic_slot(self, name: str, state: _SlotState) -> list:
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
            return [[str(state.day), ()]]
        if name == "relative":
            rel, pron = _RELATIVES[rng.randrange(len(_RELATIVES))]
            state.his_rel = pron
            return [[rel, ()]]
        if name == "his_rel":
            return [[state.his_rel, ()]]
        if name == "complaint":
            return [[self.complaint, ()]]
        if name == "ros":
            items = rng.sample(self.filler["ros"], min(len(self.filler["ros"]), rng.randint(2, 4)))
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
            text = render_plain(parse_template(f), self.rng, lambda n, k: self._basic_slot(n, _SlotState()))
            self.fact_text[f] = text
        if self.rng.random() < self.cfg.typo_rate:
            text = _typo(self.rng, text)
        codes = [c for c in self.m.fact_codes[f] if c in self.evidenced]
        if code not in codes:
            codes.insert(0, code)
        return [text, tuple((c, "evidence") for c in codes)], codes

    def sentence(self, template: str, code: str | None = None, slots: _SlotState | None = None) -> Sent:
        """``template`` written for ``code`` (its slots filled; ``slots`` seeds what they share)."""
        codes: list[str] = []
        avoid: set = set()
        state = dataclasses.replace(slots) if slots is not None else _SlotState()

        def slot(name: str, kind: str | None) -> list:
            if name == "mention":
                if state.distractor:
                    d_code, d_kind, forms = state.distractor
                    return [self.mention_piece(d_code, "d:" + d_kind, forms)]
                codes.append(code)
                return [self.mention_piece(code)]
            if name == "evidence":
                piece, cs = self.fact(code, [kind] if kind else state.kinds, avoid)
                codes.extend(cs)
                return [piece]
            if name == "history":
                items = state.history
                out: list = []
                for i, c in enumerate(items):
                    if i:
                        out.append([" and " if i == len(items) - 1 else ", ", ()])
                    out.append(self.mention_piece(c))
                    codes.append(c)
                return out
            return self._basic_slot(name, state)

        pieces = render_pieces(parse_template(template), self.rng, slot, [])
        return Sent(pieces, codes)

    def plain(self, template: str, slots: _SlotState | None = None) -> Sent:
        return self.sentence(template, None, slots)

    # ---- structure ---------------------------------------------------------------------------
    def _prefix_words(self, block: Block) -> int:
        return 1 if block.style == "num" else 0

    def add(self, section: str, sent: Sent, block: Block | None = None, pos: str = "random") -> None:
        blocks = self.sections[section]
        if block is None:
            if not blocks:
                blocks.append(Block("para" if section not in LIST_STYLE else LIST_STYLE[section]))
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
                  head_sep: str = " ") -> Block:
        b = Block(style, head, head_sep)
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
        self._begin(codes, modes, compact)
        self._skeleton(compact)
        placed = _Placed()
        for c in codes:
            mode = modes[c]
            if mode == "none":
                continue
            if mode == "explicit":
                chosen = self._choose_placements(c, scale)
            else:
                chosen = self._choose_indirect(c, scale)
            for place in chosen:
                _PLACE_EVIDENCE[place](self, c, mode, scale, placed)
        self._lay_out(placed, compact)
        self._distractors(codes)
        if compact:  # only the sections that carry something get a title
            for name, title in SECTIONS:
                if any(b.items for b in self.sections[name]):
                    self.words += count_words(title)

    def _begin(self, codes: list[str], modes: dict[str, str], compact: bool) -> None:
        """Fresh note state; the principal (acute, explicit) problem and the chief complaint."""
        rng, filler = self.rng, self.filler
        self.words = 0
        self.compact = compact
        self.sections: dict[str, list[Block]] = {name: [] for name, _ in SECTIONS}
        self.used_facts: set = set()
        self.fact_text: dict[str, str] = {}
        self.evidenced = {c for c in codes if modes[c] != "none"}
        self.silent = {c for c in codes if modes[c] == "none"}
        explicit = [c for c in codes if modes[c] == "explicit"]
        acute = [c for c in explicit if self.m.by[c]["kind"] == "acute"]
        self.principal = acute[rng.randrange(len(acute))] if acute else None
        p_entry = self.m.by[self.principal] if self.principal else None
        comp = p_entry["complaints"] if p_entry and p_entry["complaints"] else filler["complaints"]
        self.complaint = comp[rng.randrange(len(comp))]

    def _skeleton(self, compact: bool) -> None:
        """The fixed parts: preamble, one block per section, and the lines every note has."""
        rng, filler = self.rng, self.filler
        if compact:
            self.preamble = f"Sex:   {self.sex}\n \n"
        else:
            for name, title in SECTIONS:
                self.words += count_words(title)
            self.preamble = (f"Name:  ___                     Unit No:   ___\n \nAdmission Date:  ___              "
                             f"Discharge Date:   ___\n \nDate of Birth:  ___             Sex:   {self.sex}\n \n"
                             f"Service: MEDICINE\n \n")
        self.words += count_words(self.preamble)
        self.exam_state = _ExamState()
        self.fill_state = _FillerState()
        for name, style, head in (("allergies", "plain", 0), ("cc", "plain", 0), ("procedures", "plain", 0),
                                  ("hpi", "para", 1), ("pmh", "dash", 0), ("social", "para", 0),
                                  ("family", "para", 0), ("exam", "plain", 1), ("results", "plain", 0),
                                  ("course", "para", 1), ("meds_adm", "num", 0), ("meds_dis", "num", 0),
                                  ("disposition", "plain", 0), ("dx", "plain", 2), ("condition", "plain", 0),
                                  ("instructions", "para", 2), ("followup", "plain", 0)):
            self.new_block(name, style, head=head)
        dx_block = self.sections["dx"][0]
        self.add("cc", Sent([[self.complaint[0].upper() + self.complaint[1:], ()]]))
        self.add("dx", Sent([["PRIMARY DIAGNOSIS:", ()]]), dx_block, pos="end")
        self.add("instructions", self.plain(filler["instructions"][0]), pos="end")
        if not compact:
            self.add("procedures", self.plain(rng.choice(filler["procedures"])))
            self.add("exam", self.plain("ADMISSION EXAM:"), pos="end")
            self.add("course", self.plain(rng.choice(filler["course_opening"])), pos="end")
            self.add("disposition", self.plain(rng.choice(filler["disposition"])))
            self.add("condition", self.plain(rng.choice(filler["condition"])))
            self.add("instructions", self.plain(filler["instructions"][1]), pos="end")
            for closing in rng.sample(filler["instructions_closing"], min(2, len(filler["instructions_closing"]))):
                self.add("instructions", self.plain(closing), pos="end")
            self.sections["instructions"][0].tail = min(2, len(filler["instructions_closing"]))
            self.add("followup", self.plain(rng.choice(filler["followup"])))
        else:
            self.sections["instructions"][0].head = 1
            self.sections["course"][0].head = 0

    # ---- one placement of a code's evidence (dispatched by _PLACE_EVIDENCE) -----------------
    def _place_pmh(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        e = self.m.by[c]
        kinds = [k for k in ("lab", "finding", "procedure") if k in e["evidence"]]
        if kinds and self.rng.random() < 0.3:
            self.add("pmh", self.sentence("{mention} ({evidence})", c, _SlotState(kinds=kinds)))
        else:
            self.add("pmh", self.sentence("{mention}", c))

    def _place_hpi_list(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        placed.history.append(c)

    def _place_hpi(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        self.add("hpi", self.sentence(self._context(c, mention=True), c))

    def _place_course(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        self._course_paragraph(c, scale)

    def _place_dx(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        s = self.sentence("{mention}", c)
        if c == self.principal:
            placed.primary_dx = s
        else:
            placed.secondary_dx.append(s)

    def _place_instructions(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        rng, e = self.rng, self.m.by[c]
        if rng.random() < 0.5 and any(_ORAL_RE.search(f) for f in e["evidence"].get("med", ())):
            self.add("instructions", self._oral_med_sentence(c, rng.choice(self.T["instructions_med"])))
        else:
            self.add("instructions", self.sentence(rng.choice(self.T["instructions_mention"]), c))

    def _place_social(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        if mode == "explicit":
            tpl = self._context(c, mention=True)
        else:
            tpl = self._indirect_template(c, "history")
        self.add("social", self.sentence(tpl, c, _SlotState(kinds=["history"])))

    def _place_allergy(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        self.add("allergies", self.sentence("{mention}", c))

    def _place_meds(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        oral = self.m.by[c]["kind"] != "acute"
        line = self._med_line(c, oral_only=not oral)
        if line is not None:
            placed.med_lines.append((line, oral))

    def _place_results(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        e = self.m.by[c]
        kinds = [k for k in ("lab", "finding") if k in e["evidence"]]
        kind = kinds[self.rng.randrange(len(kinds))]
        self.add("results", self.sentence(self.rng.choice(self.T["results"][kind]), c, _SlotState(kinds=[kind])))

    def _place_indirect(self, c: str, mode: str, scale: float, placed: _Placed) -> None:
        self._indirect_sentence(c)

    def _lay_out(self, placed: _Placed, compact: bool) -> None:
        """What the placements collected (HPI opening, diagnoses, medication lists), then the
        defaults of sections left empty."""
        rng, T, filler = self.rng, self.T, self.filler
        if placed.history:
            tpl = rng.choice(T["hpi_opening"]["with_history"])
            opening = self.sentence(tpl, None, _SlotState(history=placed.history))
        else:
            opening = self.plain(rng.choice(T["hpi_opening"]["without_history"]))
        self.add("hpi", opening, self.sections["hpi"][0], pos="start")
        dx_block = self.sections["dx"][0]
        dx_block.items.insert(1, placed.primary_dx or Sent([[self.complaint[0].upper() + self.complaint[1:], ()]]))
        self.words += dx_block.items[1].words
        if placed.secondary_dx:
            self.add("dx", Sent([["SECONDARY DIAGNOSES:", ()]]), dx_block, pos="end")
            for s in placed.secondary_dx:
                self.add("dx", s, dx_block, pos="end")
        for line, on_admission in placed.med_lines:
            if on_admission:
                self.add("meds_adm", Sent([list(p) for p in line.pieces], line.codes))
            self.add("meds_dis", line)
        if not self.sections["allergies"][0].items:
            self.add("allergies", self.plain(rng.choice(filler["allergies"])))
        if not compact:
            for sec, pool in (("pmh", "pmh"), ("social", "social"), ("family", "family"), ("meds_adm", "meds"),
                              ("meds_dis", "meds"), ("results", "results")):
                if not self.sections[sec][0].items:
                    got = self._filler_sentence(pool, self.fill_state)
                    if got is not None:
                        self.add(sec, got[1])
            self.add("exam", self.plain(rng.choice(filler["vitals"])), pos="end")

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
            sub = [t for t in ctx if any(n == "mention" for n, _ in template_slots(parse_template(t))) == mention]
            ctx = sub or ctx
        return ctx[self.rng.randrange(len(ctx))]

    def _indirect_template(self, c: str, kind: str) -> str:
        e = self.m.by[c]
        own = [t for t in e["contexts"]
               if not any(n == "mention" for n, _ in template_slots(parse_template(t)))
               and all(k == kind for n, k in template_slots(parse_template(t)) if n == "evidence")]
        pool = list(self.T["indirect"][kind]) + own
        return pool[self.rng.randrange(len(pool))]

    def _indirect_sentence(self, c: str) -> None:
        e = self.m.by[c]
        kinds = list(e["evidence"])
        kind = kinds[self.rng.randrange(len(kinds))]
        s = self.sentence(self._indirect_template(c, kind), c, _SlotState(kinds=[kind]))
        if kind == "symptom":
            self.add("hpi", s)
        elif kind == "history" and self.sections["social"]:
            self.add("social", s)
        else:
            self.add("course", s)

    def _med_line(self, c: str, oral_only: bool) -> Sent | None:
        e = self.m.by[c]
        facts = [f for f in e["evidence"].get("med", ()) if not oral_only or _ORAL_RE.search(f)]
        if not facts:
            return None
        return self._oral_med_sentence(c, "{evidence}", facts)

    def _oral_med_sentence(self, c: str, template: str, facts: list | None = None) -> Sent:
        e = self.m.by[c]
        facts = facts or [f for f in e["evidence"]["med"] if _ORAL_RE.search(f)]
        avoid = {f for f in e["evidence"]["med"] if f not in facts}
        codes: list[str] = []

        def slot(name: str, kind: str | None) -> list:
            if name == "evidence":
                piece, cs = self.fact(c, ["med"], avoid)
                codes.extend(cs)
                return [piece]
            return self._basic_slot(name, _SlotState())

        pieces = render_pieces(parse_template(template), self.rng, slot, [])
        if pieces and pieces[0][0][:1].islower() and template.startswith("{evidence}"):
            pieces[0] = [pieces[0][0][0].upper() + pieces[0][0][1:], pieces[0][1]]
        return Sent(pieces, codes)

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
            s = self.sentence(text, d, _SlotState(distractor=(d, kind, forms)))
            self.add(section, s)

    # ---- filler ------------------------------------------------------------------------------
    def _filler_sentence(self, section: str, state: _FillerState) -> tuple[str, Sent] | None:
        """The next filler sentence of ``section`` (with the kind of line it is), or None when the
        section has no more to give."""
        rng, filler = self.rng, self.filler
        if section == "exam":
            ex = self.exam_state
            if not ex.queue:
                if ex.round >= EXAM_ROUNDS:
                    return None
                ex.round += 1
                systems = list(filler["exam"])
                ex.queue = ([] if ex.round == 1 else ["DISCHARGE EXAM:", rng.choice(filler["vitals"])]) + [
                    rng.choice(filler["exam"][s]) for s in systems]
            return "exam", self.plain(ex.queue.pop(0))
        if section == "course":
            if state.day_block is not None and rng.random() < 0.25:
                state.day = state.day + 1 + (rng.random() < 0.3)
                days = state.left.setdefault("course_day", [])
                if not days:
                    days.extend(range(len(filler["course_day"])))
                i = days.pop(rng.randrange(len(days)))
                return "day", self.plain(filler["course_day"][i], _SlotState(day=state.day))
            pool = filler["course"]
        elif section == "hpi":
            if not state.ros_done and rng.random() < 0.25:
                state.ros_done = True
                return "hpi", self.plain(rng.choice(filler["ros_templates"]))
            pool = filler["hpi"]
        elif section == "results":
            if state.result_lines >= MAX_RESULT_LINES:
                return None
            state.result_lines += 1
            pool = filler["results"]
        elif section == "instructions":
            pool = filler["instructions"][2:]
        else:
            pool = filler[section]
        # draw without replacement until the pool is used up; only course prose then repeats
        left = state.left.setdefault(section, list(range(len(pool))))
        if not left:
            if section not in ("course", "hpi", "results"):
                return None
            left.extend(range(len(pool)))
        i = left.pop(rng.randrange(len(left)))
        return section, self.plain(pool[i])

    def fill(self, target: int) -> None:
        rng, cfg = self.rng, self.cfg
        budget = max(0, target - self.words)
        state = self.fill_state
        course_budget = budget * COURSE_FILLER_SHARE
        if self.compact:
            course_budget = 0.0
        if course_budget > DAY_BY_DAY_MIN_WORDS:  # a day-by-day paragraph somewhere after the opening
            state.day_block = self.new_block("course", "para", at_end=False)
        if course_budget > TRANSITIONAL_MIN_WORDS:  # transitional issues close the course
            b = self.new_block("course", "para", at_end=True, head=1, head_sep="\n")
            self.add("course", self.plain(rng.choice(self.filler["transitional_header"])), b, pos="end")
            for t in rng.sample(self.filler["transitional"], min(len(self.filler["transitional"]), rng.randint(2, 4))):
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
                    self.add("course", sent, state.day_block, pos="end")
                elif kind == "exam":
                    self.add("exam", sent, self.sections["exam"][0], pos="end")
                else:
                    self.add(target_sec, sent)
                added += sent.words + extra
            leftover += max(0.0, goal - added)
        while self.words < cfg.min_words:  # lengths below min_words only when max_words forbids more
            _, sent = self._filler_sentence("course", state)
            if self.compact and not any(b.items for b in self.sections["course"]):
                self.words += count_words("Brief Hospital Course:")
            self.add("course", sent)


#: Where a code's evidence goes (a placement chosen by ``_choose_placements`` / ``_choose_indirect``)
#: -> the method that writes it.
_PLACE_EVIDENCE = {
    "pmh": _Note._place_pmh,
    "hpi_list": _Note._place_hpi_list,
    "hpi": _Note._place_hpi,
    "course": _Note._place_course,
    "dx": _Note._place_dx,
    "instructions": _Note._place_instructions,
    "social": _Note._place_social,
    "allergy": _Note._place_allergy,
    "meds": _Note._place_meds,
    "results": _Note._place_results,
    "indirect": _Note._place_indirect,
}


def _target_words(rng: random.Random, cfg: EmbeddedCorpus) -> int:
    lo, hi = cfg.min_words, cfg.max_words
    if rng.random() < 0.07:  # the tail of long stays
        t = hi - (hi - 0.55 * hi) * rng.random() ** 2
    else:
        t = rng.lognormvariate(math.log(math.sqrt(lo * hi)), 0.42)
    return int(min(hi, max(lo, t)))


def generate_note(model: CodeModel, cfg: EmbeddedCorpus, seed: int, index: int):
    rng = random.Random(f"rationale-kit-corpus:{seed}:{index}")
    sex = "F" if rng.random() < 0.5 else "M"
    note = _Note(model, cfg, rng, sex=sex, age=rng.randint(28, 94))
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
    text, spans, distractors = render_note(note.preamble, note.sections, note.compact)
    return text, sorted(codes), spans, distractors, modes
