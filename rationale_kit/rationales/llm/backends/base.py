"""What every backend shares: the :class:`Backend` interface (``generate(prompt) ->
LLMResponse`` and ``agenerate``), the raw :class:`LLMResponse`, running a coroutine from sync code
(also inside Jupyter's loop), and reading a server's ``Retry-After``."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Optional

from rationale_kit.rationales.llm.credentials import RUN_CLEARED, credential_guard
from rationale_kit.rationales.llm.prompting import Prompt
from rationale_kit.rationales.llm.response import LLMResponse


#: Finish reasons meaning the provider withheld the answer.
def run_coro(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside a running loop (Jupyter: then in a thread
    with its own loop; an interrupt of the caller cancels the run there)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    loop = asyncio.new_event_loop()
    box: dict[str, asyncio.Task] = {}

    def runner() -> Any:
        asyncio.set_event_loop(loop)
        try:
            box["task"] = loop.create_task(coro)
            return loop.run_until_complete(box["task"])
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(runner)
        try:
            return fut.result()
        except KeyboardInterrupt:
            if "task" in box and not loop.is_closed():
                loop.call_soon_threadsafe(box["task"].cancel)
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - the interrupt is what matters
                pass
            raise


class Backend:
    """``generate(prompt) -> LLMResponse``. Backends raise :class:`TransientLLMError` for what is
    worth retrying and :class:`PermanentLLMError` for other request-level failures."""

    name: str = "backend"
    model: str = ""
    remote: bool = False  # sends prompts off this machine
    max_concurrency: Optional[int] = None  # cap on requests in flight (None: no cap)
    #: settings that change the answers beyond (backend, model, prompt); part of the cache key when set.
    cache_tag: str = ""
    #: whether the documents this backend is given are credentialed (None: not said, which a
    #: remote backend treats as credentialed) and whether the user has acknowledged that their
    #: remote set-up may receive them (see :func:`credential_guard`).
    credentialed: Optional[bool] = None
    allow_remote_credentialed_data: bool = False

    def settings(self) -> dict:
        """Every setting besides (backend, model, prompt) that determines the answer (sampling
        temperature, output budget, decoding constraints...): part of :func:`cache_key`."""
        return {}

    def secrets(self) -> list[str]:
        """Strings that must never be persisted (API keys); :meth:`scrub` masks them."""
        return []

    def scrub(self, s: Optional[str]) -> Optional[str]:
        """``s`` with every secret replaced by ``***``."""
        if not s:
            return s
        for sec in self.secrets():
            if sec:
                s = s.replace(sec, "***")
        return s

    def count_tokens(self, prompt: Prompt) -> Optional[int]:
        """Input tokens of ``prompt`` by the backend's own tokenizer, without calling a service;
        None when the backend has none here (the dry run then estimates, and says so)."""
        return None

    def generate(self, prompt: Prompt) -> LLMResponse:
        raise NotImplementedError

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        return await asyncio.to_thread(self.generate, prompt)

    def _check_clearance(self) -> None:
        """A remote backend's own check before it sends anything; inside :func:`run_llm` (which
        checked the run's documents itself) it is not repeated."""
        if not RUN_CLEARED.get():
            credential_guard(self, self.credentialed, self.allow_remote_credentialed_data)

    async def aclose(self) -> None:
        """Release per-event-loop resources (HTTP clients) at the end of a run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from an HTTP ``Retry-After`` header: delta-seconds (``"12"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, a Unix time); None when
    absent or unreadable; never negative."""
    if value is None:
        return None
    v = str(value).strip()
    if not v:
        return None
    try:
        secs = float(v)
        return max(0.0, secs) if secs == secs else None
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class AsyncBackend(Backend):
    """A backend whose native call is :meth:`agenerate` (an HTTP client per event loop):
    :meth:`generate` runs one call on its own loop and closes the client after it."""

    def generate(self, prompt: Prompt) -> LLMResponse:
        async def once() -> LLMResponse:
            try:
                return await self.agenerate(prompt)
            finally:
                await self.aclose()

        return run_coro(once())
