"""The errors of the LLM path: request-level failures a backend raises (retried or not), and the
configuration, replay and credentialed-data errors that stop a run."""
from __future__ import annotations

from typing import Optional


class LLMError(RuntimeError):
    """A request-level failure raised by a backend; ``run_llm`` records it and goes on."""

    def __init__(self, message: str, status: Optional[int] = None, retry_after: Optional[float] = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientLLMError(LLMError):
    """Worth retrying: rate limit (429), server error (5xx), time-out, dropped connection."""


class PermanentLLMError(LLMError):
    """Not worth retrying: bad request, prompt too long for the model, refused credentials..."""


class MalformedAnswerError(TransientLLMError):
    """The server answered (HTTP 200) but the answer cannot be read (not a chat completion, a
    ``message`` or ``usage`` of the wrong type, a token count that is not a number). A failed
    attempt of that request: retried per the retry policy, never stopping the other requests."""


class TimeoutLLMError(TransientLLMError):
    """A request that ran past the time-out; :func:`run_llm` retries it and lowers the number of
    requests in flight (a server that queues requests makes the waiting ones time out)."""


class LLMConfigError(ValueError):
    """A backend cannot be built (missing API key, model file, replay file)."""


class UnsupportedRequestError(LLMConfigError):
    """The server rejects the request format itself (e.g. ``response_format: json_schema``): no
    request can succeed, so the run stops at once with a message naming the setting to change
    (nothing is retried; answers already cached stay)."""


class ReplayMissError(LookupError):
    """The replay file has no answer for a prompt. Stops the run (nothing to fall back on)."""


class CredentialedDataError(PermissionError):
    """Credentialed (MIMIC) documents would be sent to a remote LLM service."""
