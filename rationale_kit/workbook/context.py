"""The notebook context: ``setup``, the series of notebooks, artifact folders and their manifests.

A notebook calls :func:`setup` and gets a :class:`Context`; it reads upstream artifacts through
``ctx.read`` / ``ctx.upstream`` (which check their manifests) and ends with ``ctx.save_manifest``.
The artifact files themselves are declared in :mod:`rationale_kit.workbook.artifacts`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rationale_kit.core.lock import hold_kernel_lock
from rationale_kit.core.config import Profile, load_profile, to_dict
from rationale_kit.core.runtime import (
    ROOT,
    atomic_write_text,
    file_hash,
    git_commit,
    pick_device,
    seed_everything,
    versions,
)
from rationale_kit.core.sources import with_source_columns
from rationale_kit.workbook.artifacts import Artifact, ContractError, check_columns

NOTEBOOKS_DIR = ROOT / "notebooks"
#: Written last by every notebook (``Context.save_manifest``): its folder is complete once it exists.
MANIFEST_FILE = "manifest.json"

#: The series, in order. Each notebook writes artifacts/<profile>/<name>/.
NOTEBOOKS = [
    "01_data",
    "02_train",
    "03_rationales",
    "04_alignment",
    "05_faithfulness",
    "06_plausibility",
    "07_guided_learning",
    "08_few_shot",
    "09_open_questions",
]


class MissingArtifact(RuntimeError):
    """An upstream notebook has not been run for this profile."""


class StaleArtifact(RuntimeError):
    """An upstream artifact differs from the hash its notebook's manifest recorded (or is gone)."""


def _check_writer(artifact: "Artifact", notebook: str) -> None:
    if artifact.writer != notebook:
        raise ContractError(f"{notebook} may not write {artifact.key}: its declared writer is {artifact.writer} "
                            f"(rationale_kit/workbook/artifacts.py); read it with ctx.read")


def _check_reader(artifact: "Artifact", notebook: str) -> None:
    if notebook not in artifact.readers:
        raise ContractError(f"{notebook} is not a declared reader of {artifact.key} (readers: "
                            f"{', '.join(artifact.readers) or 'none'}); add it to the artifact's readers in "
                            f"rationale_kit/workbook/artifacts.py")


def read_artifact_file(path: Path, artifact: "Artifact | None" = None) -> Any:
    """A DataFrame for ``.parquet`` / ``.csv`` (the declared index column as index), the parsed
    object for ``.json``."""
    index_col = artifact.index_column if artifact is not None else None
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if path.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, index_col=0 if index_col else None)
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    raise ValueError(f"{path}: no reader for {path.suffix!r} files")


def artifacts_root(profile: Profile) -> Path:
    """``artifacts/<profile>/``: one folder per notebook below it."""
    return ROOT / profile.common.artifacts_dir / profile.name


def figures_dir(profile: Profile) -> Path:
    """``figures/`` for the default profile (the committed figures), ``figures/<profile>/`` else."""
    d = ROOT / profile.common.figures_dir
    return d if profile.name == "default" else d / profile.name


@dataclass
class Context:
    """What a notebook needs: its profile, output folder, device and upstream artifacts."""

    notebook: str
    profile: Profile
    out_dir: Path
    device: str
    started: float
    _verified: set = dataclasses.field(default_factory=set, repr=False)

    @property
    def artifacts_root(self) -> Path:
        return artifacts_root(self.profile)

    @property
    def figures_dir(self) -> Path:
        d = figures_dir(self.profile)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upstream(self, notebook: str) -> Path:
        """Folder of an upstream notebook's artifacts; fails at once when it has not been run, or
        when one of its files differs from the hash in its manifest (:class:`StaleArtifact`)."""
        d = self.artifacts_root / notebook
        rerun = (f"python -m rationale_kit run --profile {self.profile.name} --only {notebook[:2]}")
        if not (d / MANIFEST_FILE).exists():
            raise MissingArtifact(
                f"{self.notebook} needs the artifacts of {notebook} for profile "
                f"{self.profile.name!r} ({d} has no manifest): run notebooks/{notebook}.ipynb first "
                f"({rerun})"
            )
        if notebook not in self._verified:
            verify_artifacts(d, rerun)
            self._verified.add(notebook)
        return d

    def path(self, artifact: "Artifact") -> Path:
        """Where this notebook's own ``artifact`` lies (for files written by a library call, e.g.
        a model folder). Reading another notebook's artifact goes through :meth:`read`."""
        _check_writer(artifact, self.notebook)
        return self.artifacts_root / artifact.writer / artifact.file

    def upstream_path(self, artifact: "Artifact") -> Path:
        """The path of an upstream artifact, after :meth:`upstream` checked its notebook's manifest
        and that this notebook is a declared reader."""
        _check_reader(artifact, self.notebook)
        return self.upstream(artifact.writer) / artifact.file

    def write(self, artifact: "Artifact", obj: Any, index: bool | None = None) -> Path:
        """Write this notebook's ``artifact`` atomically: a DataFrame as ``.parquet`` or ``.csv``
        (``index`` defaults to False, True where the contract declares an index column), a
        JSON-able object as ``.json``. A table with a ``source`` column gets the typed
        ``source_kind`` / ``source_variant`` columns beside it (core.sources). Refuses (:class:`ContractError`) when this notebook is not
        the declared writer or a declared column (JSON: key) is missing."""
        _check_writer(artifact, self.notebook)
        check_columns(artifact, obj)
        if hasattr(obj, "columns"):  # typed source columns beside every display name
            obj = with_source_columns(obj)
        path = self.artifacts_root / artifact.writer / artifact.file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        keep_index = artifact.index_column is not None if index is None else index
        if path.suffix == ".parquet":
            obj.to_parquet(tmp, index=keep_index)
        elif path.suffix == ".csv":
            obj.to_csv(tmp, index=keep_index)
        elif path.suffix == ".json":
            tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
        else:
            raise ContractError(f"{artifact.key}: no writer for {path.suffix!r} files")
        os.replace(tmp, path)
        return path

    def read(self, artifact: "Artifact", optional: bool = False) -> Any:
        """An upstream artifact (checked as :meth:`upstream` does, and this notebook must be one of
        its declared readers): a DataFrame for ``.parquet`` and ``.csv``, the parsed object for
        ``.json``. ``optional``: None when its notebook has not been run for this profile (a
        stale or partial folder still raises)."""
        _check_reader(artifact, self.notebook)
        folder = self.artifacts_root / artifact.writer
        if optional and not (folder / MANIFEST_FILE).exists():
            return None
        path = self.upstream_path(artifact)
        return read_artifact_file(path, artifact)

    def figure(self, name: str) -> Path:
        return self.figures_dir / name

    def save_manifest(self, inputs: Iterable[str | os.PathLike] = (), extra: dict | None = None) -> Path:
        """Write ``manifest.json``: parameters, input hashes, versions, git commit, duration."""
        hashes = {}
        for p in inputs:
            p = Path(p)
            if p.is_file():
                hashes[str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)] = file_hash(p)
        outputs = sorted(q for q in self.out_dir.rglob("*") if q.is_file() and q.name != MANIFEST_FILE
                         and not q.name.endswith(".tmp"))
        manifest = {
            "notebook": self.notebook,
            "profile": self.profile.name,
            "parameters": to_dict(self.profile),
            "inputs": hashes,
            "outputs": [str(q.relative_to(self.out_dir)) for q in outputs],
            # checked when a later notebook reads this folder (Context.upstream)
            "output_hashes": {str(q.relative_to(self.out_dir)): file_hash(q) for q in outputs},
            "versions": versions(),
            "git_commit": git_commit(),
            "device": self.device,
            "seconds": round(time.time() - self.started, 1),
            **(extra or {}),
        }
        path = self.out_dir / MANIFEST_FILE
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str))  # the notebook's last write
        return path


def verify_artifacts(folder: str | os.PathLike, rerun: str = "") -> dict:
    """Check every file listed in ``folder/manifest.json``'s ``output_hashes`` against its hash;
    returns the manifest. A missing or changed file raises :class:`StaleArtifact` naming the file and
    the notebook to re-run; an unreadable manifest raises it too."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    what = f"re-run notebooks/{folder.name}.ipynb" + (f" ({rerun})" if rerun else "")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise StaleArtifact(f"{path} is unreadable ({type(exc).__name__}: {exc}); {what}") from None
    for rel, want in (manifest.get("output_hashes") or {}).items():
        f = folder / rel
        if not f.is_file():
            raise StaleArtifact(f"{f} is listed in {path} but missing; {what}")
        got = file_hash(f)
        if got != want:
            raise StaleArtifact(
                f"{f} was changed after {folder.name} wrote it (sha256 {got}, manifest {want}); {what}"
            )
    return manifest


def setup(notebook: str, profile: str | None = None, overrides: dict | None = None, show: bool = True) -> Context:
    """Load and validate the profile, seed everything, pick the device, limit threads.

    ``profile`` None means ``$RK_PROFILE`` or ``default``. Returns the notebook's :class:`Context`.
    """
    profile = profile or os.environ.get("RK_PROFILE", "default")
    prof = load_profile(profile, overrides)
    hold_kernel_lock()  # inside a run's kernel: the next run waits for this kernel to end
    seed_everything(prof.common.seed)
    device = pick_device(prof.common.device)
    try:
        import torch

        torch.set_num_threads(max(1, prof.common.threads))
    except ImportError:  # pragma: no cover
        pass
    out_dir = artifacts_root(prof) / notebook
    out_dir.mkdir(parents=True, exist_ok=True)
    # the folder is "done" only once save_manifest() writes the manifest again at the end
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    ctx = Context(notebook=notebook, profile=prof, out_dir=out_dir, device=device, started=time.time())
    if show:
        print(f"notebook {notebook} | profile {prof.name} | device {device} | seed {prof.common.seed}")
        print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items()))
        section = {
            "01_data": "data", "02_train": "train", "03_rationales": "rationales",
            "04_alignment": "alignment", "05_faithfulness": "faithfulness",
            "06_plausibility": "plausibility", "07_guided_learning": "guided", "08_few_shot": "few_shot",
            "09_open_questions": "open_questions",
        }.get(notebook)
        shown = {"common": dataclasses.asdict(prof.common)}
        if section:
            shown[section] = dataclasses.asdict(getattr(prof, section))
        print(json.dumps(shown, indent=1, default=str))
    return ctx
