"""Building, saving and loading the coding models, and inference on raw texts with a saved model
(:func:`build_model`, :func:`save`, :func:`load`, :class:`Predictor`). See docs/method/models.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from rationale_kit.core.records import DataError
from rationale_kit.core.config import ModelParams, Word2Vec, params_for
from rationale_kit.models.caml import CAML
from rationale_kit.models.encoders import bundled_encoder_path, load_encoder, load_hf_tokenizer, train_word2vec
from rationale_kit.models.label_attention import LabelAttentionModel
from rationale_kit.models.laat import LAAT
from rationale_kit.models.plm_icd import PLMICD
from rationale_kit.models.tokenizers import MASK_ID, PieceTokenizer, WordTokenizer

MODEL_NAMES = ("caml", "laat", "plm_icd")
FORMAT_VERSION = 1


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
    params = params_for(name, params)  # the family's typed config (another family's keys: an error)
    if name == "plm_icd":
        path = params.encoder_path or str(bundled_encoder_path())
        if not Path(path).exists():
            raise FileNotFoundError(f"PLM-ICD encoder_path {path} does not exist (local checkpoints only)")
        tok = PieceTokenizer(load_hf_tokenizer(path), params.chunk_size * params.max_chunks, max_words)
        return PLMICD(labels, tok, params, load_encoder(path), max_words)
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
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{cfg_file}: unreadable {what} configuration ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("format") != version:
        raise ValueError(f"{cfg_file}: unsupported {what} format {cfg.get('format')!r}")
    return cfg


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LabelAttentionModel, dict]:
    """Read a model written by :func:`save`; returns ``(model in eval mode on device, info)`` where
    ``info`` is the saved configuration (``name, labels, params, threshold, extra, ...``)."""
    from safetensors.torch import load_model

    path = Path(path)
    cfg = read_saved_config(path, "model")
    cfg_file = path / "config.json"
    for key in ("params", "name", "labels", "max_words", "tokenizer"):
        if key not in cfg:
            raise DataError(f"{cfg_file}: missing key {key!r}")
    threshold = cfg.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0.0 <= float(threshold) <= 1.0):
        raise DataError(f"{cfg_file}: threshold must be a number in [0, 1] or null, got {threshold!r}")
    labels = cfg["labels"]
    if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
        raise DataError(f"{cfg_file}: labels must be a list of code strings")
    if not isinstance(cfg["params"], dict) or not isinstance(cfg["tokenizer"], dict):
        raise DataError(f"{cfg_file}: params and tokenizer must be JSON objects")
    name = cfg["name"]
    if name not in MODEL_NAMES:
        raise DataError(f"{cfg_file}: unknown model name {name!r} (known: caml, laat, plm_icd)")
    try:
        params = params_for(name, cfg["params"], strict=False)  # older versions saved every family's keys
        max_words = int(cfg["max_words"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{cfg_file}: bad params or max_words ({exc})") from None
    tcfg = cfg["tokenizer"]
    try:
        if name in ("caml", "laat"):
            try:
                vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise DataError(f"{path / 'vocab.json'}: unreadable ({type(exc).__name__}: {exc})") from None
            tok = WordTokenizer(vocab, max_words=tcfg["max_words"], numbers=tcfg.get("numbers", "keep"))
            model: LabelAttentionModel = (CAML if name == "caml" else LAAT)(labels, tok, params, max_words)
        elif name == "plm_icd":
            tok = PieceTokenizer(load_hf_tokenizer(path / "tokenizer"), tcfg["max_tokens"], tcfg.get("max_words"))
            model = PLMICD(labels, tok, params, load_encoder(path / "encoder", from_config_only=True), max_words)
        else:
            raise DataError(f"{cfg_file}: unknown model name {name!r} (known: caml, laat, plm_icd)")
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot rebuild the {name} model from its files ({type(exc).__name__}: {exc})") from None
    weights = path / "model.safetensors"
    try:
        load_model(model, str(weights), strict=True)
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise several kinds; name the file
        raise DataError(f"{weights}: unreadable or not this model's weights ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]})") from None
    model.threshold = None if threshold is None else float(threshold)
    model.to(device).eval()
    return model, cfg


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
