"""Explain any note with any coder: codes, probabilities and the rationales of every source for
raw texts, outside the notebook series (the engine of ``python -m rationale_kit explain`` and of
:func:`rationale_kit.explain`). See docs/method/explain.md.

Sources: ``attention`` (the model's label-wise attention), ``gradient`` (``settings.gradient_method``,
input x gradient by default), ``attention_x_gradient``, ``entity`` (offline entity linking) and
``llm`` (quotes of the profile's LLM backend, aligned to spans, through the same functions and
credential guard as ``quote``). The model sources give soft scores (one per unit, with character
offsets) and top-k spans; entity and LLM give spans.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from rationale_kit.core import icd, runtime
from rationale_kit.core.records import SPAN_COLUMNS, DataError
from rationale_kit.models.adapter import as_coder

SOURCES = ("attention", "gradient", "attention_x_gradient", "entity", "llm")
MODEL_SOURCES = ("attention", "gradient", "attention_x_gradient")
DEFAULT_SOURCES = ("attention", "gradient", "attention_x_gradient", "entity")
#: Columns of :attr:`Explanation.spans`: the span format plus ``method``, ``model`` and ``score``.
SPAN_OUT_COLUMNS = SPAN_COLUMNS + ["method", "model", "score"]
#: Columns of :attr:`Explanation.predictions`: one row per (note, code) predicted or explained.
PREDICTION_COLUMNS = ["note_id", "code", "prob", "pred", "given", "explained", "threshold", "rank"]


@dataclass(frozen=True)
class ExplainSettings:
    """What ``explain`` computes. ``sources``: a subset of :data:`SOURCES`; ``top_k``: units kept
    per (note, code) when a soft source is turned into spans; ``threshold``: decision threshold
    (None: the model's tuned one, else 0.5); ``min_codes``: a note whose predicted codes are fewer
    still has its ``min_codes`` most probable codes explained (marked ``pred`` False);
    ``gradient_method``: the ``gradient`` source's method; ``batch_size``: notes per forward pass;
    ``code_batch``: codes per backward pass; ``llm``/``alignment``/entity settings come from the
    profile (:func:`settings_from_profile`)."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    top_k: int = 10
    threshold: Optional[float] = None
    min_codes: int = 1
    gradient_method: str = "input_x_gradient"
    ig_steps: int = 16
    batch_size: int = 8
    code_batch: int = 8
    entity_fuzzy_threshold: float = 0.8
    entity_negation_window: int = 8
    entity_filter_historical: bool = False
    alignment_threshold: float = 1.7
    occurrences: str = "all"
    llm: Any = None  # the profile's rationales.llm (core.config.LLM); None: the defaults

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(f"unknown source(s) {bad} (choose from {list(SOURCES)})" if bad else "no source asked for")
        object.__setattr__(self, "sources", tuple(dict.fromkeys(self.sources)))
        if self.top_k < 1 or self.batch_size < 1 or self.code_batch < 1 or self.min_codes < 0:
            raise ValueError("top_k, batch_size and code_batch must be >= 1 and min_codes >= 0")
        if self.gradient_method not in ("input_x_gradient", "integrated_gradients", "attention_x_gradient"):
            raise ValueError(f"unknown gradient method {self.gradient_method!r}")

    def key(self) -> dict:
        """The settings as plain JSON (what a resumed run must match)."""
        d = dataclasses.asdict(self)
        d["sources"] = list(self.sources)
        return json.loads(json.dumps(d, default=str, sort_keys=True))


def settings_from_profile(profile: Any = "default", **overrides: Any) -> ExplainSettings:
    """Settings with the profile's entity, alignment, gradient and LLM parameters (a profile name,
    path or :class:`~rationale_kit.core.config.Profile`), then ``overrides`` (None values ignored)."""
    from rationale_kit.core.config import load_profile

    prof = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    r = prof.rationales
    base = dict(top_k=r.topk, gradient_method=r.gradient_method, ig_steps=r.ig_steps,
                batch_size=r.attention_batch_size, entity_fuzzy_threshold=r.entity_fuzzy_threshold,
                entity_negation_window=r.entity_negation_window, entity_filter_historical=r.entity_filter_historical,
                alignment_threshold=prof.alignment.threshold, occurrences=prof.alignment.occurrences, llm=r.llm)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "sources" in base:
        base["sources"] = tuple(base["sources"])
    return ExplainSettings(**base)


@dataclass(frozen=True)
class Explanation:
    """The tables of one ``explain`` run.

    * ``docs``: ``note_id, text``;
    * ``predictions``: :data:`PREDICTION_COLUMNS`, one row per (note, code) that is predicted
      (``prob > threshold``), given (``codes``) or explained, most probable first per note
      (``rank`` 1, 2, ... over all labels);
    * ``scores``: the soft table (:data:`~rationale_kit.core.records.SCORE_COLUMNS`) of the model
      sources: one row per (note, code, source, unit) with the unit's character offsets;
    * ``spans``: :data:`SPAN_OUT_COLUMNS`: top-k spans of each soft source (``method`` the soft
      method, ``score`` the span's share of the pair's score), entity spans (``method``
      ``exact_code``/``category``) and aligned LLM quotes (``method`` ``zero_shot``);
    * ``llm``: per (note, code) the LLM outcome (``status``: aligned, unaligned, no_quotes,
      failed...) with the quote; empty without the llm source;
    * ``info``: model name, threshold, sources, seconds per source.
    """

    docs: pd.DataFrame
    predictions: pd.DataFrame
    scores: pd.DataFrame
    spans: pd.DataFrame
    llm: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)

    def note(self, note_id: str) -> "Explanation":
        """The rows of one note."""
        def sub(f: pd.DataFrame) -> pd.DataFrame:
            return f[f.note_id == note_id].reset_index(drop=True) if len(f) and "note_id" in f else f
        return Explanation(sub(self.docs), sub(self.predictions), sub(self.scores), sub(self.spans), sub(self.llm), self.info)


def concat_explanations(parts: Sequence[Explanation]) -> Explanation:
    """One :class:`Explanation` of several (notes in order; ``info`` of the first, seconds summed)."""
    if not parts:
        raise ValueError("nothing to concatenate")

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f.columns)]
        non_empty = [f for f in frames if len(f)]
        if not non_empty:
            return frames[0] if frames else pd.DataFrame()
        return pd.concat(non_empty, ignore_index=True)

    info = dict(parts[0].info)
    secs: dict[str, float] = {}
    for p in parts:
        for k, v in p.info.get("seconds", {}).items():
            secs[k] = secs.get(k, 0.0) + float(v)
    info["seconds"] = secs
    return Explanation(cat([p.docs for p in parts]), cat([p.predictions for p in parts]),
                       cat([p.scores for p in parts]), cat([p.spans for p in parts]),
                       cat([p.llm for p in parts]), info)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding ``config.json`` of a saved model: ``path`` itself or ``path/model``
    (notebook 02 writes ``02_train/<name>/model``)."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "config.json").exists():
            return cand
    raise FileNotFoundError(f"{path}: no saved model (no config.json here or in {p / 'model'})")


def model_hash(path: str | Path) -> str:
    """A hash of a saved model's ``config.json`` and weights (what a resumed run must match)."""
    d = resolve_model_dir(path)
    h = hashlib.sha256()
    for f in ("config.json", "model.safetensors"):
        if (d / f).exists():
            h.update(runtime.file_hash(d / f).encode())
    return h.hexdigest()[:16]


def load_coder(model_or_dir: Any, device: str = "cpu") -> tuple[Any, dict]:
    """``(coding model in eval mode on device, info)`` from a saved model folder, a workbook
    model or a :class:`~rationale_kit.models.adapter.Coder` (wrapped)."""
    if isinstance(model_or_dir, (str, Path)):
        from rationale_kit import models

        d = resolve_model_dir(model_or_dir)
        model, info = models.load(d, device=device)
        return model, dict(info) | {"path": str(d), "hash": model_hash(d)}
    model = as_coder(model_or_dir).to(device)
    model.eval()
    return model, {"name": getattr(model, "name", type(model).__name__.lower())}


def docs_frame(texts_or_frame: Any) -> tuple[pd.DataFrame, Optional[dict[str, list[str]]]]:
    """``(docs with note_id and text, given codes per note or None)`` from one text, a list of
    texts (ids ``note_1``...), a mapping ``{note_id: text}`` or a frame with ``note_id, text``
    (and optional ``codes``). Duplicate ids, missing or empty texts are :class:`DataError`."""
    codes = None
    if isinstance(texts_or_frame, str):
        texts_or_frame = [texts_or_frame]
    if isinstance(texts_or_frame, pd.DataFrame):
        f = texts_or_frame
        missing = [c for c in ("note_id", "text") if c not in f.columns]
        if missing:
            raise DataError(f"documents: missing column(s) {missing}")
        ids, texts = [str(n) for n in f["note_id"]], list(f["text"])
        if "codes" in f.columns:
            codes = {}
            for nid, cs in zip(ids, f["codes"]):
                if cs is not None and not (isinstance(cs, float) and np.isnan(cs)):
                    codes[nid] = [str(c) for c in cs]
    elif isinstance(texts_or_frame, Mapping):
        ids, texts = [str(k) for k in texts_or_frame], list(texts_or_frame.values())
    else:
        texts = list(texts_or_frame)
        ids = [f"note_{i + 1}" for i in range(len(texts))]
    seen: set[str] = set()
    for i, (nid, t) in enumerate(zip(ids, texts)):
        if nid in seen:
            raise DataError(f"documents row {i}: duplicate note_id {nid!r}")
        seen.add(nid)
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"documents row {i}: note {nid!r} has no text")
    if not ids:
        raise DataError("no documents")
    return pd.DataFrame({"note_id": ids, "text": texts}), codes


def check_codes(codes: Mapping[str, Sequence[str]], labels: Sequence[str], where: str = "codes") -> None:
    """Raise :class:`DataError` for a given code the model does not have."""
    known = set(labels)
    for nid, cs in codes.items():
        bad = [c for c in cs if c not in known]
        if bad:
            raise DataError(f"{where}: note {nid!r}: unknown code(s) {bad} (not among the model's {len(known)} labels)")


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
class Explainer:
    """A loaded coder plus what the sources need (the entity linker and LLM backend are built on
    first use and kept), explaining one batch of notes at a time (:meth:`explain_batch`)."""

    def __init__(self, model_or_dir: Any, settings: ExplainSettings | None = None, device: str = "cpu",
                 cache_dir: str | Path | None = None, credentialed: Optional[bool] = None,
                 progress: bool = False):
        self.settings = settings or ExplainSettings()
        self.device = runtime.pick_device(device)
        self.model, self.info = load_coder(model_or_dir, self.device)
        self.name = str(getattr(self.model, "name", None) or self.info.get("name") or "model")
        t = self.settings.threshold
        if t is None:
            t = getattr(self.model, "threshold", None)
        self.threshold = 0.5 if t is None else float(t)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.credentialed = credentialed
        self.progress = progress
        self._linker = None
        self._backend = None
        has_att = getattr(self.model, "has_attention", True)
        wants_att = {"attention", "attention_x_gradient"} & set(self.settings.sources)
        if self.settings.gradient_method == "attention_x_gradient" and "gradient" in self.settings.sources:
            wants_att.add("gradient")
        if wants_att and not has_att:
            raise ValueError(f"{self.name} has no per-label attention: drop source(s) {sorted(wants_att)}")
        if "llm" in self.settings.sources:
            self.backend()  # the credential guard refuses before any note is computed

    # --- sources -------------------------------------------------------------------------------
    def linker(self, codes: Iterable[str]):
        """The entity linker over the model's labels and ``codes`` (built once)."""
        from rationale_kit.rationales.entity import EntityLinker

        want = sorted(set(self.model.labels) | set(codes))
        if self._linker is None or not set(want) <= self._linker_codes:
            s = self.settings
            self._linker = EntityLinker(want, kb_cache_dir=self.cache_dir / "kb" if self.cache_dir else None,
                                        fuzzy_threshold=s.entity_fuzzy_threshold,
                                        descriptions={c: icd.describe(c) for c in want},
                                        negation_window=s.entity_negation_window,
                                        filter_historical=s.entity_filter_historical)
            self._linker_codes = set(want)
        return self._linker

    def backend(self):
        """The LLM backend of the settings, behind the credential guard (as ``quote``)."""
        from rationale_kit.core.config import LLM
        from rationale_kit.rationales import llm

        if self._backend is None:
            cfg = self.settings.llm or LLM()
            self._backend = llm.make_backend(cfg, credentialed=self.credentialed)
            llm.credential_guard(self._backend, self.credentialed, cfg.allow_remote_credentialed_data)
        return self._backend

    def _predict(self, docs: pd.DataFrame) -> dict[str, np.ndarray]:
        """Probabilities ``[L]`` per note (batched by length)."""
        m = self.model
        encs = {nid: m.tokenizer.encode(t) for nid, t in zip(docs.note_id, docs.text)}
        order = sorted(encs, key=lambda n: -len(encs[n].ids))
        out: dict[str, np.ndarray] = {}
        bs = self.settings.batch_size
        with torch.no_grad():
            for b in range(0, len(order), bs):
                chunk = order[b:b + bs]
                ids, mask = m.collate([encs[n] for n in chunk])
                logits = m(ids.to(self.device), mask.to(self.device)).logits
                probs = torch.sigmoid(logits.double()).cpu().numpy()
                for n, p in zip(chunk, probs):
                    out[n] = p
        return out

    def _prediction_rows(self, docs, probs, given) -> tuple[pd.DataFrame, pd.DataFrame]:
        labels = list(self.model.labels)
        row_of = {c: i for i, c in enumerate(labels)}
        rows, pairs = [], []
        for nid in docs.note_id:
            p = probs[nid]
            order = np.argsort(-p, kind="stable")
            rank = np.empty(len(p), dtype=np.int64)
            rank[order] = np.arange(1, len(p) + 1)
            pred = [j for j in order if p[j] > self.threshold]
            if given is not None and nid in given:
                explain = [row_of[c] for c in given[nid] if c in row_of]
                extra = [c for c in given[nid] if c not in row_of]  # entity/LLM-only codes
            else:
                explain = pred if len(pred) >= self.settings.min_codes else list(order[:self.settings.min_codes])
                extra = []
            explain_set = set(int(j) for j in explain)
            given_set = set(given.get(nid, [])) if given else set()
            for j in sorted(set(int(j) for j in pred) | explain_set, key=lambda j: rank[j]):
                rows.append((nid, labels[j], float(p[j]), bool(p[j] > self.threshold), labels[j] in given_set,
                             j in explain_set, self.threshold, int(rank[j])))
            for c in extra:
                rows.append((nid, c, np.nan, False, True, True, self.threshold, 0))
            pairs += [(nid, labels[j]) for j in sorted(explain_set, key=lambda j: rank[j])] + [(nid, c) for c in extra]
        return (pd.DataFrame(rows, columns=PREDICTION_COLUMNS),
                pd.DataFrame(pairs, columns=["note_id", "code"]))

    def explain_batch(self, docs: pd.DataFrame, given: Optional[Mapping[str, Sequence[str]]] = None,
                      sources: Optional[Sequence[str]] = None) -> Explanation:
        """Predictions and every source's rationales for the notes of ``docs`` (``note_id, text``);
        ``given``: codes to explain per note instead of the predicted ones. ``sources``: a subset
        of the settings' sources (default: all of them)."""
        from rationale_kit.rationales import attention_rationales, gradient_rationales, soft_to_spans
        from rationale_kit.rationales.tables import soft_table

        s = self.settings
        sources = tuple(sources or s.sources)
        docs = docs[["note_id", "text"]].reset_index(drop=True)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        probs = self._predict(docs)
        preds, pairs = self._prediction_rows(docs, probs, given)
        seconds["predict"] = time.perf_counter() - t0
        model_pairs = pairs[pairs.code.isin(set(self.model.labels))]
        soft_parts, span_parts, llm_rows = [], [], pd.DataFrame()
        for src in sources:
            t0 = time.perf_counter()
            if src in MODEL_SOURCES and len(model_pairs):
                if src == "attention":
                    res = attention_rationales(self.model, docs, model_pairs, source="attention", model_name=self.name,
                                               batch_size=s.batch_size, device=self.device)
                else:
                    method = "attention_x_gradient" if src == "attention_x_gradient" else s.gradient_method
                    res = gradient_rationales(self.model, docs, model_pairs, method=method, steps=s.ig_steps, source=src,
                                              model_name=self.name, code_batch=s.code_batch, device=self.device)
                soft_parts.append(res.table)
                if len(res.table):
                    sp = soft_to_spans(res.table, topk=s.top_k)
                    span_parts.append(sp.assign(method=sp.soft_method)[SPAN_OUT_COLUMNS])
            elif src == "entity" and len(pairs):
                span_parts.append(self._entity(docs, pairs))
            elif src == "llm" and len(pairs):
                sp, llm_rows = self._llm(docs, pairs)
                span_parts.append(sp)
            seconds[src] = time.perf_counter() - t0
        scores = soft_table(soft_parts) if soft_parts else soft_table([])
        spans = (pd.concat([p for p in span_parts if len(p)], ignore_index=True)
                 if any(len(p) for p in span_parts) else pd.DataFrame(columns=SPAN_OUT_COLUMNS))
        spans = spans[SPAN_OUT_COLUMNS].astype({"start": "int64", "end": "int64", "score": "float64"})
        info = {"model": self.name, "threshold": self.threshold, "sources": list(sources), "seconds": seconds,
                "top_k": s.top_k, "gradient_method": s.gradient_method}
        return Explanation(docs, preds, scores, spans, llm_rows, info)

    def _entity(self, docs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        from rationale_kit.rationales.entity import entity_rationales, link_documents

        linker = self.linker(pairs.code)
        mentions = link_documents(docs, linker)
        ent = entity_rationales(docs, pairs, linker, mentions=mentions)
        return ent.assign(source="entity")[SPAN_OUT_COLUMNS]

    def _llm(self, docs: pd.DataFrame, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Aligned LLM quotes for the pairs (one request per note with its codes), as ``quote``."""
        from rationale_kit.core.config import LLM
        from rationale_kit.rationales import llm
        from rationale_kit.rationales.alignment import align_quotes

        cfg = self.settings.llm or LLM()
        backend = self.backend()
        codes = pairs.groupby("note_id", sort=False)["code"].apply(list)
        asked = docs[docs.note_id.isin(codes.index)].assign(codes=lambda d: d.note_id.map(codes))
        desc = {c: icd.describe(c) for c in pairs.code.unique()}
        reqs = llm.make_requests(asked, desc, [], version=cfg.prompt_version, max_note_chars=cfg.max_note_chars)
        answers, _calls = llm.run_llm(
            reqs, backend, cache_dir=self.cache_dir / "llm_cache" if self.cache_dir else None,
            concurrency=cfg.concurrency, max_retries=cfg.max_retries, credentialed=self.credentialed,
            allow_remote_credentialed_data=cfg.allow_remote_credentialed_data, progress=False,
            backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
            requests_per_minute=cfg.requests_per_minute, record=cfg.record_file,
            max_answer_chars=cfg.max_answer_chars, max_quotes_per_code=cfg.max_quotes_per_code)
        ok = answers[answers.status == "ok"]
        rows, outcome = [], []
        if len(ok):
            al = align_quotes(docs, ok[["note_id", "code", "quote"]].reset_index(drop=True),
                              threshold=self.settings.alignment_threshold, occurrences=self.settings.occurrences)
            for r in al.itertuples(index=False):
                hit = not pd.isna(r.start)
                if hit:
                    rows.append((r.note_id, r.code, int(r.start), int(r.end), "", "llm", "zero_shot",
                                 str(getattr(backend, "model", backend.name)), float(r.score)))
                outcome.append((r.note_id, r.code, r.quote, "aligned" if hit else "unaligned"))
        for r in answers[answers.status != "ok"].itertuples(index=False):
            outcome.append((r.note_id, r.code, None, r.status))
        return (pd.DataFrame(rows, columns=SPAN_OUT_COLUMNS),
                pd.DataFrame(outcome, columns=["note_id", "code", "quote", "status"]))


def explain(model_or_dir: Any, texts_or_frame: Any, sources: Sequence[str] = ("attention", "gradient"),
            codes: Any = None, *, top_k: Optional[int] = None, threshold: Optional[float] = None,
            device: str = "cpu", profile: Any = "default", batch_size: Optional[int] = None,
            cache_dir: str | Path | None = None, credentialed: Optional[bool] = None,
            progress: bool = False) -> Explanation:
    """Codes, probabilities and rationales of ``texts_or_frame`` under a coder, in one call.

    ``model_or_dir``: a folder written by notebook 02 / ``train`` (``.../<name>`` or
    ``.../<name>/model``), a workbook model, or any :class:`~rationale_kit.models.adapter.Coder`.
    ``texts_or_frame``: a text, a list of texts, ``{note_id: text}`` or a frame ``note_id, text``
    (optional ``codes``). ``sources``: see :data:`SOURCES`. ``codes``: the codes to explain instead
    of the predicted ones: a list (every note) or ``{note_id: [codes]}``; a frame's ``codes`` column
    is used when ``codes`` is None. The entity, gradient, alignment and LLM settings are the
    ``profile``'s. ``credentialed``: whether the notes are credentialed data (None: unknown, so a
    remote LLM is refused). Returns an :class:`Explanation`.

    >>> ex = rationale_kit.explain("artifacts/default/02_train/caml", "Type 2 diabetes ...")  # doctest: +SKIP
    >>> ex.spans  # doctest: +SKIP
    """
    docs, given = docs_frame(texts_or_frame)
    if codes is not None:
        given = {n: list(codes) for n in docs.note_id} if not isinstance(codes, Mapping) else {str(k): list(v) for k, v in codes.items()}
    settings = settings_from_profile(profile, sources=tuple(sources), top_k=top_k, threshold=threshold,
                                     batch_size=batch_size)
    ex = Explainer(model_or_dir, settings, device=device, cache_dir=cache_dir, credentialed=credentialed,
                   progress=progress)
    if given is not None and set(settings.sources) & set(MODEL_SOURCES):
        check_codes(given, ex.model.labels)
    bs = settings.batch_size * 4
    parts = []
    batches = range(0, len(docs), bs)
    for b in runtime.progress(batches, progress, total=len(batches), desc="explain"):
        parts.append(ex.explain_batch(docs.iloc[b:b + bs], given))
    return concat_explanations(parts)
