"""One raw answer of a backend (:class:`LLMResponse`) and the finish reasons that mean the provider
withheld it; what the backends return and the parser reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BLOCK_FINISH_REASONS = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}


@dataclass(frozen=True)
class LLMResponse:
    """One raw answer. ``blocked_reason`` is set when the provider withheld it."""

    text: str
    finish_reason: Optional[str]
    input_tokens: int
    output_tokens: int
    blocked_reason: Optional[str] = None
