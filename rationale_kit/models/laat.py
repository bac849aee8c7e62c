"""LAAT: word embedding, a BiLSTM that reverses each note within its own length, and the LAAT
label attention (Vu et al., 2020). See docs/method/models.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rationale_kit.core.config import LAATParams
from rationale_kit.models.label_attention import LAATHead, LabelAttentionModel
from rationale_kit.models.tokenizers import PAD_ID, WordTokenizer


class LAAT(LabelAttentionModel):
    """Embedding (dropout) -> BiLSTM -> dropout -> LAAT label attention.

    The BiLSTM is two one-directional LSTMs (``lstm_fwd``, ``lstm_bwd``); the backward one reads
    each note reversed *within its own length*, so padding never reaches a real position and a
    note's output does not depend on the batch (why not ``pack_padded_sequence``: see
    docs/method/models.md). The ``attention_mask`` must mark a prefix of each row (right padding,
    as ``collate`` makes it).
    """

    name = "laat"

    def __init__(self, labels: Sequence[str], tokenizer: WordTokenizer, params: LAATParams, max_words: int = 4000):
        super().__init__(labels, tokenizer, params, max_words)
        e, hdim = params.embed_dim, params.hidden
        self.embedding = nn.Embedding(tokenizer.vocab_size, e, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(params.dropout)
        self.lstm_fwd = nn.LSTM(e, hdim, num_layers=1, batch_first=True)
        self.lstm_bwd = nn.LSTM(e, hdim, num_layers=1, batch_first=True)
        self.out_drop = nn.Dropout(params.dropout)
        self.head = LAATHead(2 * hdim, params.projection, self.num_labels)
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
