"""Training of the coding models of :mod:`rationale_kit.models`: :func:`train_model` (the loop,
with guided learning, checkpoints and data-parallel training), the rationale loss and
:func:`predict_probs`.

Modules: ``loop`` (:func:`train_model`, :func:`make_batches`, :func:`param_groups`),
``checkpoints`` (the run's key, matching checkpoints, atomic saves, RNG states), ``distributed``
(the data-parallel context), ``losses`` (:func:`attention_rationale_loss`, :func:`teacher_units`)
and ``predict`` (:func:`predict_probs`). See docs/method/training.md.
"""
from __future__ import annotations

from rationale_kit.training.losses import attention_rationale_loss, teacher_units
from rationale_kit.training.loop import (
    BUCKET_BATCHES, HISTORY_COLUMNS, NonFiniteLoss, TrainResult, make_batches, param_groups, train_model,
)
from rationale_kit.training.predict import amp_dtype, predict_encoded, predict_probs

__all__ = [
    "HISTORY_COLUMNS", "NonFiniteLoss", "TrainResult", "attention_rationale_loss", "make_batches",
    "predict_probs", "teacher_units", "train_model",
    "BUCKET_BATCHES", "amp_dtype", "param_groups", "predict_encoded",
]
