"""CAML: word embedding, a same-length convolution and one attention vector per label
(Mullenbach et al., 2018). See docs/method/models.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rationale_kit.core.config import CAMLParams
from rationale_kit.models.label_attention import LabelAttentionModel, select_rows
from rationale_kit.models.tokenizers import PAD_ID, WordTokenizer


class CAML(LabelAttentionModel):
    """Embedding (dropout) -> Conv1d (same length) -> tanh -> per-label attention softmax(H U)."""

    name = "caml"

    def __init__(self, labels: Sequence[str], tokenizer: WordTokenizer, params: CAMLParams, max_words: int = 4000):
        super().__init__(labels, tokenizer, params, max_words)
        e, f, k = params.embed_dim, params.filters, params.kernel
        self.embedding = nn.Embedding(tokenizer.vocab_size, e, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(params.dropout)
        self.conv = nn.Conv1d(e, f, k)
        self.U = nn.Linear(f, self.num_labels, bias=False)
        self.final = nn.Linear(f, self.num_labels)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.xavier_uniform_(self.U.weight)
        nn.init.xavier_uniform_(self.final.weight)

    @property
    def padding(self) -> tuple[int, int]:
        """``(left, right)`` zero padding of the convolution input that keeps the length: position
        ``j`` of the output is unit ``j``."""
        k = self.conv.kernel_size[0]
        return ((k - 1) // 2, k - 1 - (k - 1) // 2)

    def label_parameters(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the label indices ``labels`` (LongTensor ``[R]``, on the model's device): the
        attention vectors ``U`` ``[R, F]``, the output weights ``[R, F]`` and the biases ``[R]``."""
        return (self.U.weight.index_select(0, labels), self.final.weight.index_select(0, labels),
                self.final.bias.index_select(0, labels))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_drop(embeds) * mask.unsqueeze(-1).to(embeds.dtype)
        x = F.pad(x.transpose(1, 2), self.padding)
        return torch.tanh(self.conv(x)).transpose(1, 2)  # [B, T, F]

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        u = select_rows(self.U.weight, label_idx).float()
        return torch.matmul(u, h.transpose(1, 2))  # [B, K, T]
