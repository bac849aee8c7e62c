"""Runtime helpers every layer may use: the repository root, progress bars that work in
JupyterLab and under papermill, device choice, seeding, library versions, the git commit, file
hashes and atomic writes."""
from __future__ import annotations

import hashlib
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Iterable

#: The repository root (``notebooks/``, ``params/``, ``artifacts/`` live below it).
ROOT = Path(__file__).resolve().parents[2]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``: readers see the old or the
    new content, never a truncated file."""
    _atomic_write(path, (text,))


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` (each without its newline; streamed, e.g. JSONL records) to ``path`` as
    :func:`atomic_write_text` does; an error while producing them leaves the old file untouched."""
    _atomic_write(path, (line + "\n" for line in lines))


def _atomic_write(path: str | os.PathLike, chunks: Iterable[str]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the main libraries (those importable)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ["torch", "transformers", "numpy", "pandas", "scikit-learn", "papermill", "google-genai", "scispacy", "gensim", "simple-icd-10-cm"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def pick_device(choice: str) -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "cpu"
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("profile asks for device 'cuda' but no CUDA device is available")
    return choice


def progress(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A progress bar that renders as a widget in JupyterLab and as text under papermill/CLI."""
    if os.environ.get("PAPERMILL_EXECUTION") or not _in_notebook_kernel():
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, disable=not enabled, mininterval=2.0, **kwargs)


def _in_notebook_kernel() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and ip.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:  # pragma: no cover
        return False
