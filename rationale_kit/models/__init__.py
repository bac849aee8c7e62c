"""Coding models with label-wise attention: CAML, LAAT and PLM-ICD, their tokenizers, building,
persistence and inference on raw texts.

One module per part: ``tokenizers`` (:class:`Encoded`, :class:`WordTokenizer`,
:class:`PieceTokenizer`), ``label_attention`` (the base class and :class:`ModelOutput`), ``caml``,
``laat``, ``plm_icd``, ``encoders`` (pretrained encoder, HF tokenizer, word2vec) and ``io``
(:func:`build_model`, :func:`save`, :func:`load`, :class:`Predictor`). The model contract is in
``docs/INTERFACES.md``; units, tokenizers and persistence are described in docs/method/models.md.
"""
from __future__ import annotations

from rationale_kit.models.caml import CAML
from rationale_kit.models.encoders import (
    FrozenPrefix, PrefixStore, bundled_encoder_path, freeze_encoder_layers, load_encoder, load_hf_tokenizer,
    train_word2vec,
)
from rationale_kit.models.io import (
    FORMAT_VERSION, MODEL_NAMES, Predictor, build_model, load, load_predictor, read_saved_config, save,
    save_weights,
)
from rationale_kit.models.laat import LAAT
from rationale_kit.models.label_attention import LAATHead, LabelAttentionModel, ModelOutput, select_rows
from rationale_kit.models.plm_icd import PLMICD
from rationale_kit.models.tokenizers import (
    MASK_ID, NUM_ID, PAD_ID, SPECIALS, UNK_ID, Encoded, PieceTokenizer, WordTokenizer,
)

__all__ = [
    "CAML", "LAAT", "PLMICD", "Encoded", "LabelAttentionModel", "ModelOutput", "PieceTokenizer",
    "Predictor", "WordTokenizer", "build_model", "bundled_encoder_path", "load", "load_predictor",
    "save", "train_word2vec",
    "FORMAT_VERSION", "LAATHead", "MASK_ID", "MODEL_NAMES", "NUM_ID", "PAD_ID", "SPECIALS", "UNK_ID",
    "FrozenPrefix", "PrefixStore", "freeze_encoder_layers", "load_encoder", "load_hf_tokenizer", "read_saved_config", "save_weights",
    "select_rows",
]
