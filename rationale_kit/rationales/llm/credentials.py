"""The credentialed-data guard: MIMIC notes may go to a remote LLM service only when the user has
said that their set-up meets PhysioNet's terms. Fails closed. See docs/method/llm.md."""
from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd

from rationale_kit.rationales.llm.errors import CredentialedDataError

if TYPE_CHECKING:
    from rationale_kit.rationales.llm.backends.base import Backend


#: set by run_llm (in its own context) once its credentialed-data check has passed
RUN_CLEARED: "contextvars.ContextVar[bool]" = contextvars.ContextVar("rk_llm_run_cleared", default=False)


def credential_guard(backend: Backend, credentialed: Optional[bool], allow_remote_credentialed_data: bool) -> None:
    """Raise :class:`CredentialedDataError` when documents that are (or are not said not to be)
    credentialed would go to a remote LLM. Fails closed: ``credentialed=None`` (unknown) counts as
    credentialed, and only ``allow_remote_credentialed_data=True`` lets them go."""
    if credentialed is not False and backend.remote and not allow_remote_credentialed_data:
        unknown = ("It is not known whether these documents are credentialed (say credentialed=False "
                   "for public data). " if credentialed is None else "")
        raise CredentialedDataError(
            unknown +
            f"refusing to send credentialed documents (MIMIC) to the remote LLM backend {backend.name!r} "
            f"({backend.model}). Under the PhysioNet credentialed data use agreement you may not share the "
            "data with anyone who is not a credentialed user, and sending notes to an online service is "
            "sharing unless the service is used as PhysioNet's guidance for online services allows (no "
            "data retention, no human review, an agreement with the provider that covers it). Use the "
            "local or replay backend, or, once you have checked that your account and settings meet those "
            "terms, set allow_remote_credentialed_data=True (profile: rationales.llm.allow_remote_credentialed_data)."
        )


def is_credentialed(profile: Any, docs: Optional[pd.DataFrame] = None) -> bool:
    """Whether the documents of a run are credentialed data, decided from the profile and the data
    source, not only from a column that an older or hand-built table may lack: the MIMIC data set
    (``common.dataset: mimic``) or ``data.credentialed: true`` makes them credentialed, and so does
    any document marked ``credentialed`` in ``docs``."""
    if getattr(profile.data, "credentialed", False) or getattr(profile.common, "dataset", None) == "mimic":
        return True
    if docs is not None and "credentialed" in docs.columns:
        col = docs["credentialed"]
        return bool(col.isna().any() or col.astype(bool).any())  # an unknown value counts as credentialed
    return False
