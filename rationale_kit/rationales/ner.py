"""The NER formulation of rationale learning: a code-agnostic BIO tagger over windows of word
pieces (the PLM-ICD encoder family), trained on teacher rationale spans; its spans are attached to
the note's predicted codes (:func:`assign_codes`). See docs/method/rationales.md (section 3) for
the formulation, labels, decoding and persistence.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rationale_kit.models import FrozenPrefix, PieceTokenizer, PrefixStore, bundled_encoder_path, load_encoder, load_hf_tokenizer, freeze_encoder_layers, read_saved_config, save_weights
from rationale_kit.core.records import SPAN_COLUMNS, merge_intervals, validate_spans

__all__ = [
    "NERConfig", "NERModel", "TAGS", "assign_codes", "data_hash", "load_ner", "piece_labels",
    "save_ner", "train_ner", "windows",
]

TAGS = ("O", "B", "I")
O_TAG, B_TAG, I_TAG = 0, 1, 2
FORMAT_VERSION = 1
FORMULATIONS = ("code_agnostic",)


@dataclass(frozen=True)
class NERConfig:
    """Settings of the NER tagger. ``encoder_path=None`` means the bundled MiniLM.

    ``max_windows_per_note`` caps the training windows of a note (windows with rationale pieces
    are kept first, then a seeded random choice of the others); ``None`` keeps them all.
    """

    encoder_path: str | None = None
    window: int = 128
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    max_windows_per_note: int | None = None
    seed: int = 13
    formulation: str = "code_agnostic"
    freeze_layers: int = 0  # freeze the embeddings and the first N encoder layers (CPU budgets)
    head_lr: float | None = None  # learning rate of the tagging head; None = lr

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"NERConfig.window must be >= 1, got {self.window}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"NERConfig: bad epochs/batch_size/lr in {self}")
        if self.max_windows_per_note is not None and self.max_windows_per_note < 1:
            raise ValueError("NERConfig.max_windows_per_note must be >= 1 or None")
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"NERConfig.formulation must be one of {FORMULATIONS}, got {self.formulation!r} "
                             "(the code-conditioned formulation is not offered: see rationale_kit.rationales.ner)")

    def resolved_encoder(self) -> str:
        return str(self.encoder_path) if self.encoder_path else str(bundled_encoder_path())


# --------------------------------------------------------------------------------------------
# labels and windows
# --------------------------------------------------------------------------------------------
def piece_labels(offsets: np.ndarray, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """BIO labels ``[n_pieces]`` (int64; O=0, B=1, I=2) of pieces with character ``offsets`` for
    the union of ``spans``: B at the first piece overlapping each merged span, I after it."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    labels = np.zeros(len(offsets), dtype=np.int64)
    if len(offsets) == 0:
        return labels
    starts, ends = offsets[:, 0], offsets[:, 1]
    for s, e in merge_intervals(spans):
        hit = np.nonzero((starts < e) & (ends > s) & (ends > starts))[0]
        if len(hit) == 0:
            continue
        first = hit[0]
        # a piece shared with the previous span (a span ending inside a word) stays in that span
        if labels[first] == O_TAG:
            labels[first] = B_TAG
        labels[hit[1:]] = np.where(labels[hit[1:]] == O_TAG, I_TAG, labels[hit[1:]])
    return labels


def windows(n_pieces: int, window: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` piece ranges of at most ``window`` pieces covering ``n_pieces``."""
    return [(s, min(s + window, n_pieces)) for s in range(0, n_pieces, window)]


def _note_spans(spans: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    if len(spans) == 0:
        return out
    for nid, s, e in zip(spans["note_id"].astype(str), spans["start"], spans["end"]):
        out.setdefault(nid, []).append((int(s), int(e)))
    return out


def data_hash(docs: pd.DataFrame, spans: pd.DataFrame) -> str:
    """Hash of the training data: note ids and texts, and the union of each note's spans."""
    per_note = _note_spans(spans)
    h = hashlib.sha256()
    for nid, text in zip(docs["note_id"].astype(str), docs["text"]):
        h.update(f"{nid}\t{len(text)}\t{merge_intervals(per_note.get(nid, []))}\n".encode())
        h.update(hashlib.sha256(str(text).encode("utf-8")).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
class NERModel(nn.Module):
    """Encoder over windows of ``window`` word pieces -> dropout -> linear BIO head."""

    def __init__(self, encoder: nn.Module, hf_tokenizer: Any, cfg: NERConfig, dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.tokenizer = PieceTokenizer(hf_tokenizer, max_tokens=2**62, max_words=None)
        self.pad_id = self.tokenizer.pad_id
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit is not None:
            # RoBERTa-style position ids start after the padding index
            usable = limit - (int(encoder.config.pad_token_id or 0) + 1
                              if getattr(encoder.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
                              else 0)
            if cfg.window > usable:
                raise ValueError(f"NER window {cfg.window} exceeds the encoder's {usable} positions")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), len(TAGS))
        self.info: dict = {}

    @property
    def window(self) -> int:
        return int(self.cfg.window)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tag logits ``[B, T, 3]`` (float32) of windows ``input_ids [B, T]``."""
        prefix = getattr(self, "_prefix", None)
        if prefix is not None:  # frozen layers computed once per window (training)
            h = prefix(attention_mask, input_ids=input_ids)
        else:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        return self.head(self.dropout(h)).float()

    def collate(self, pieces: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        t = max(1, max((len(p) for p in pieces), default=1))
        ids = torch.full((len(pieces), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pieces), t), dtype=torch.bool)
        for i, p in enumerate(pieces):
            ids[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
            mask[i, : len(p)] = True
        return ids, mask

    @torch.no_grad()
    def tag_probs(self, texts: Sequence[str], batch_size: int = 32,
                  prefix_store: PrefixStore | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per note: ``(offsets [n, 2], probs [n, 3])`` of its word pieces. ``prefix_store``: states
        of the frozen layers (``cfg.freeze_layers``) shared with other taggers of the same frozen
        weights that tag the same windows (:class:`~rationale_kit.models.encoders.PrefixStore`):
        the windows go through the frozen layers once for all of them, with the same values."""
        was_training = self.training
        self.eval()
        own_prefix = getattr(self, "_prefix", None)
        if prefix_store is not None and self.cfg.freeze_layers and own_prefix is None:
            self._prefix = FrozenPrefix(self.encoder, self.cfg.freeze_layers, store=prefix_store)
        try:
            return self._tag_probs(texts, batch_size)
        finally:
            self._prefix = own_prefix
            self.train(was_training)

    def _tag_probs(self, texts: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        encoded = [self.tokenizer.encode(str(t)) for t in texts]
        items = [(i, s, e) for i, enc in enumerate(encoded) for s, e in windows(len(enc), self.window)]
        probs = [np.zeros((len(enc), len(TAGS)), dtype=np.float32) for enc in encoded]
        order = sorted(range(len(items)), key=lambda k: -(items[k][2] - items[k][1]))
        dev = self.device
        for b in range(0, len(order), batch_size):
            batch = [items[k] for k in order[b : b + batch_size]]
            ids, mask = self.collate([encoded[i].ids[s:e] for i, s, e in batch])
            p = F.softmax(self(ids.to(dev), mask.to(dev)), dim=-1).cpu().numpy()
            for row, (i, s, e) in enumerate(batch):
                probs[i][s:e] = p[row, : e - s]
        return [(enc.offsets, pr) for enc, pr in zip(encoded, probs)]

    def predict_spans(self, docs: pd.DataFrame, batch_size: int = 32, threshold: float | None = None,
                      prefix_store: PrefixStore | None = None) -> pd.DataFrame:
        """Character spans ``DataFrame(note_id, start, end, score)`` tagged in ``docs(note_id, text)``;
        see docs/method/rationales.md for the decoding. ``prefix_store``: see :meth:`tag_probs`."""
        rows = []
        ids = docs["note_id"].astype(str).tolist()
        for nid, (offsets, probs) in zip(ids, self.tag_probs(docs["text"].tolist(), batch_size, prefix_store)):
            for s, e, score in decode(offsets, probs, threshold):
                rows.append((nid, s, e, score))
        out = pd.DataFrame(rows, columns=["note_id", "start", "end", "score"])
        return out.astype({"start": "int64", "end": "int64", "score": "float64"})


def decode(offsets: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> list[tuple[int, int, float]]:
    """BIO decoding of piece probabilities ``[n, 3]`` into ``(start, end, score)`` spans."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(TAGS))
    inside = 1.0 - probs[:, O_TAG]
    sel = probs.argmax(1) != O_TAG if threshold is None else inside >= threshold
    begin = probs[:, B_TAG] > probs[:, I_TAG]
    out: list[tuple[int, int, float]] = []
    cur: list[int] = []

    def flush() -> None:
        if cur:
            out.append((int(offsets[cur[0], 0]), int(offsets[cur[-1], 1]), float(inside[cur].mean())))
            cur.clear()

    for j in range(len(offsets)):
        if not sel[j] or offsets[j, 1] <= offsets[j, 0]:
            flush()
            continue
        # a B starts a new span only at a word boundary: a piece glued to the previous one
        # (no character between them, e.g. ``##tension``) continues the current span
        if begin[j] and cur and offsets[j, 0] > offsets[cur[-1], 1]:
            flush()
        cur.append(j)
    flush()
    return out


# --------------------------------------------------------------------------------------------
# code assignment
# --------------------------------------------------------------------------------------------
def assign_codes(spans: pd.DataFrame, codes_per_note: pd.DataFrame, codes: Iterable[str] | None = None) -> pd.DataFrame:
    """Attach code-agnostic NER spans to each code of their note.

    ``codes_per_note`` has one row per ``(note_id, code)`` (e.g. the coding model's predicted
    codes), or ``note_id`` with a list column ``codes``. ``codes`` restricts to a subset of codes.
    Returns a span table (``records.SPAN_COLUMNS`` + ``score``; ``granularity ""``, ``source
    "ner"``); spans of notes without codes are dropped.
    """
    cpn = codes_per_note
    if "code" not in cpn.columns:
        if "codes" not in cpn.columns:
            raise ValueError("codes_per_note needs columns (note_id, code) or (note_id, codes)")
        cpn = cpn[["note_id", "codes"]].explode("codes").rename(columns={"codes": "code"}).dropna()
    cpn = cpn[["note_id", "code"]].astype({"note_id": str, "code": str}).drop_duplicates()
    if codes is not None:
        keep = {str(c) for c in codes}
        cpn = cpn[cpn["code"].isin(keep)]
    sp = spans[["note_id", "start", "end", "score"]].astype({"note_id": str})
    out = sp.merge(cpn, on="note_id", how="inner")
    out["granularity"] = ""
    out["source"] = "ner"
    out = out[SPAN_COLUMNS + ["score"]].sort_values(["note_id", "code", "start", "end"], kind="stable")
    return out.astype({"start": "int64", "end": "int64", "score": "float64"}).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------
def _cfg_dict(cfg: NERConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["encoder_path"] = None if cfg.encoder_path is None else str(cfg.encoder_path)
    if cfg.freeze_layers:  # a tagger trained with dropout inside its frozen layers is not reused
        d["frozen_layers"] = "eval, computed once (FrozenPrefix)"
    return d


def save_ner(model: NERModel, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model`` into folder ``path``; ``config.json`` is written last (atomically)."""

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.tokenizer.hf.save_pretrained(path / "tokenizer")
    model.encoder.config.save_pretrained(path / "encoder")
    save_weights(model, path / "model.safetensors")
    info = {"format": FORMAT_VERSION, "config": _cfg_dict(model.cfg), "finished": True} | dict(model.info) | (extra or {})
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    os.replace(tmp, path / "config.json")
    return path


def load_ner(path: str | os.PathLike, device: str | torch.device = "cpu") -> NERModel:
    """Read a model written by :func:`save_ner` (eval mode, on ``device``); ``model.info`` holds
    the saved ``config.json``."""
    from safetensors.torch import load_model

    path = Path(path)
    info = read_saved_config(path, "NER model", FORMAT_VERSION)
    cfg = NERConfig(**{k: v for k, v in info["config"].items() if k != "frozen_layers"})
    model = NERModel(load_encoder(path / "encoder", from_config_only=True), load_hf_tokenizer(path / "tokenizer"), cfg)
    load_model(model, str(path / "model.safetensors"), strict=True)
    model.info = info
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _training_windows(model: NERModel, docs: pd.DataFrame, spans: pd.DataFrame, cfg: NERConfig,
                      rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    per_note = _note_spans(spans)
    out = []
    for nid, text in zip(docs["note_id"].astype(str), docs["text"]):
        enc = model.tokenizer.encode(str(text))
        labels = piece_labels(enc.offsets, per_note.get(nid, []))
        wins = windows(len(enc), cfg.window)
        if cfg.max_windows_per_note is not None and len(wins) > cfg.max_windows_per_note:
            pos = [w for w in wins if (labels[w[0] : w[1]] != O_TAG).any()]
            neg = [w for w in wins if not (labels[w[0] : w[1]] != O_TAG).any()]
            rng.shuffle(pos)
            rng.shuffle(neg)
            wins = sorted((pos + neg)[: cfg.max_windows_per_note])
        out.extend((enc.ids[s:e], labels[s:e]) for s, e in wins)
    return out


def train_ner(
    docs: pd.DataFrame,
    spans: pd.DataFrame,
    cfg: NERConfig = NERConfig(),
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> NERModel:
    """Train the BIO tagger on ``docs(note_id, text)`` with teacher ``spans(note_id, code, start, end,
    ...)`` (spans of notes not in ``docs`` are ignored). AdamW (weight decay 0.01), linear decay of
    the learning rate to 0, gradient clipping at 1, seeded shuffling and initialisation (bitwise
    deterministic on CPU). With ``out_dir`` the model is saved to ``out_dir / "ner"``, and a finished
    checkpoint there with the same data hash and config is loaded instead of training. The caller's
    torch RNG state is left as it was. ``model.info`` holds ``data_hash``, ``n_docs``, ``n_windows``
    and the per-epoch ``history`` (mean loss per piece, seconds)."""
    docs = docs.drop_duplicates("note_id").reset_index(drop=True)
    ids = set(docs["note_id"].astype(str))
    spans = spans[spans["note_id"].astype(str).isin(ids)].copy()
    spans["note_id"] = spans["note_id"].astype(str)
    validate_spans(spans, docs.assign(note_id=docs["note_id"].astype(str)), where="NER teacher spans")
    dhash = data_hash(docs, spans)
    want_cfg = _cfg_dict(cfg)
    ckpt = Path(out_dir) / "ner" if out_dir is not None else None
    if ckpt is not None and (ckpt / "config.json").exists():
        try:
            info = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if info.get("finished") and info.get("data_hash") == dhash and info.get("config") == want_cfg:
            return load_ner(ckpt, device)
        changed = [k for k in sorted(set(want_cfg) | set(info.get("config") or {}))
                   if (info.get("config") or {}).get(k) != want_cfg.get(k)]
        why = ("unreadable or unfinished" if not info.get("finished") else
               ", ".join((["training data"] if info.get("data_hash") != dhash else []) + changed))
        print(f"{ckpt}: starting over, the saved tagger does not match ({why})")

    dev = torch.device(device)
    fork = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):  # seeded without touching the caller's RNG state
        torch.manual_seed(cfg.seed)
        model = _train(docs, spans, cfg, dev, progress)
    model.info["data_hash"] = dhash
    if ckpt is not None:
        save_ner(model, ckpt)
    return model


def _train(docs: pd.DataFrame, spans: pd.DataFrame, cfg: NERConfig, dev: torch.device, progress: bool) -> NERModel:
    rng = np.random.default_rng(cfg.seed)
    enc_path = cfg.resolved_encoder()
    model = NERModel(load_encoder(enc_path), load_hf_tokenizer(enc_path), cfg)
    nn.init.normal_(model.head.weight, std=0.02)
    nn.init.zeros_(model.head.bias)
    if cfg.freeze_layers:
        freeze_encoder_layers(model.encoder, cfg.freeze_layers)
    model.to(dev)
    data = _training_windows(model, docs, spans, cfg, rng)
    n_batches = (len(data) + cfg.batch_size - 1) // cfg.batch_size
    total = max(1, n_batches * cfg.epochs)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("head."), p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name), []).append(p)
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if no_decay else 0.01, "lr": head_lr if head else cfg.lr}
                             for (head, no_decay), ps in groups.items()], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
    history = []
    # frozen embeddings and layers: computed once per window, in eval mode (no dropout inside them)
    model._prefix = FrozenPrefix(model.encoder, cfg.freeze_layers) if cfg.freeze_layers else None
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(data))
        loss_sum, n_tok = 0.0, 0
        for b in range(n_batches):
            batch = [data[k] for k in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            ids, mask = model.collate([x for x, _ in batch])
            labels = torch.full(ids.shape, -100, dtype=torch.long)
            for i, (_, y) in enumerate(batch):
                labels[i, : len(y)] = torch.as_tensor(y)
            logits = model(ids.to(dev), mask.to(dev))
            loss = F.cross_entropy(logits.reshape(-1, len(TAGS)), labels.to(dev).reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            k = int(mask.sum())
            loss_sum += float(loss.detach()) * k
            n_tok += k
        secs = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(1, n_tok), "seconds": secs})
        if progress:
            print(f"NER epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f} "
                  f"({len(data)} windows, {secs:.1f} s)", file=sys.stderr)
    model._prefix = None
    model.eval()
    model.info = {"n_docs": int(len(docs)), "n_windows": len(data), "encoder": enc_path, "history": history}
    return model
