"""PLM-ICD: a pretrained transformer encoder read in chunks of word pieces, with the LAAT label
attention over all chunks (Huang et al., 2022). See docs/method/models.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rationale_kit.core.config import PLMICDParams
from rationale_kit.models.encoders import freeze_encoder_layers
from rationale_kit.models.label_attention import LAATHead, LabelAttentionModel
from rationale_kit.models.tokenizers import PieceTokenizer


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
        params: PLMICDParams,
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
        self.head = LAATHead(dim, params.projection, self.num_labels)
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
