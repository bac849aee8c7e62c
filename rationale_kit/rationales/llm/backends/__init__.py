"""The LLM backends, one module each: :mod:`.base` (the interface), :mod:`.gemini`, :mod:`.openai`,
:mod:`.local` (with :mod:`.guided` and :mod:`.verbatim` decoding), :mod:`.replay`, and
:mod:`.factory` (the backend a profile asks for). Import them from their modules (or from
:mod:`rationale_kit.rationales.llm`); this package imports nothing, so that importing one backend
does not load the others."""
