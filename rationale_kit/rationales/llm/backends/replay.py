"""The replay backend: answers from a recorded JSONL file, no model at all."""
from __future__ import annotations

import os
from pathlib import Path

from rationale_kit.rationales.llm.backends.base import Backend
from rationale_kit.rationales.llm.cache import read_jsonl
from rationale_kit.rationales.llm.errors import LLMConfigError, ReplayMissError
from rationale_kit.rationales.llm.response import LLMResponse
from rationale_kit.rationales.llm.prompting import Prompt


class ReplayBackend(Backend):
    """Answers from a recorded JSONL file (one object per line, keyed by the prompt ``sha``), as
    written by ``run_llm(..., record=path)``: runs can be shared and repeated without any model.
    A prompt that is not in the file raises :class:`ReplayMissError` (it stops the run)."""

    name = "replay"
    remote = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise LLMConfigError(f"replay file {self.path} not found (write one with run_llm(..., record=...))")
        self._table = {str(r["sha"]): r for r in read_jsonl(self.path) if "sha" in r and "text" in r}
        models = sorted({f"{r.get('backend', '?')}:{r.get('model', '?')}" for r in self._table.values()})
        self.model = ",".join(models) if models else "empty"

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"ReplayBackend(path={str(self.path)!r}, answers={len(self._table)})"

    def generate(self, prompt: Prompt) -> LLMResponse:
        r = self._table.get(prompt.sha)
        if r is None:
            raise ReplayMissError(
                f"replay file {self.path} has no answer for prompt sha {prompt.sha} (prompt version "
                f"{prompt.version!r}; {len(self._table)} answers recorded). Replay needs exactly the "
                "prompts of the recording run (same prompt files, version, codes, few-shot examples "
                "and max_note_chars); record the missing ones with run_llm(..., record=...) on a live backend."
            )
        return LLMResponse(str(r.get("text") or ""), r.get("finish_reason"), int(r.get("input_tokens") or 0),
                           int(r.get("output_tokens") or 0), r.get("blocked_reason"))

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        return self.generate(prompt)
