"""Notebook context (``setup``), artifacts with manifests, and the papermill runner."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .config import Profile, load_profile, to_dict

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"

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
]


class MissingArtifact(RuntimeError):
    """An upstream notebook has not been run for this profile."""


def _git_commit() -> str:
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


def artifacts_root(profile: Profile) -> Path:
    """``artifacts/<profile>/``: one folder per notebook below it."""
    return ROOT / profile.common.artifacts_dir / profile.name


def figures_dir(profile: Profile) -> Path:
    """``figures/`` for the default profile (the committed figures), ``figures/<profile>/`` else."""
    d = ROOT / profile.common.figures_dir
    return d if profile.name == "default" else d / profile.name


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


@dataclass
class Context:
    """What a notebook needs: its profile, output folder, device and upstream artifacts."""

    notebook: str
    profile: Profile
    out_dir: Path
    device: str
    started: float

    @property
    def p(self) -> Profile:
        return self.profile

    @property
    def artifacts_root(self) -> Path:
        return artifacts_root(self.profile)

    @property
    def figures_dir(self) -> Path:
        d = figures_dir(self.profile)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upstream(self, notebook: str) -> Path:
        """Folder of an upstream notebook's artifacts; fails at once when it has not been run."""
        d = self.artifacts_root / notebook
        if not (d / "manifest.json").exists():
            raise MissingArtifact(
                f"{self.notebook} needs the artifacts of {notebook} for profile "
                f"{self.profile.name!r} ({d} has no manifest): run notebooks/{notebook}.ipynb first "
                f"(python -m rationale_kit run --profile {self.profile.name} --only {notebook[:2]})"
            )
        return d

    def figure(self, name: str) -> Path:
        return self.figures_dir / name

    def save_manifest(self, inputs: Iterable[str | os.PathLike] = (), extra: dict | None = None) -> Path:
        """Write ``manifest.json``: parameters, input hashes, versions, git commit, duration."""
        hashes = {}
        for p in inputs:
            p = Path(p)
            if p.is_file():
                hashes[str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)] = file_hash(p)
        manifest = {
            "notebook": self.notebook,
            "profile": self.profile.name,
            "parameters": to_dict(self.profile),
            "inputs": hashes,
            "outputs": sorted(str(q.relative_to(self.out_dir)) for q in self.out_dir.rglob("*") if q.is_file() and q.name != "manifest.json"),
            "versions": versions(),
            "git_commit": _git_commit(),
            "device": self.device,
            "seconds": round(time.time() - self.started, 1),
            **(extra or {}),
        }
        path = self.out_dir / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, default=str))
        return path


def setup(notebook: str, profile: str | None = None, overrides: dict | None = None, show: bool = True) -> Context:
    """Load and validate the profile, seed everything, pick the device, limit threads.

    ``profile`` None means ``$RK_PROFILE`` or ``default``. Returns the notebook's :class:`Context`.
    """
    profile = profile or os.environ.get("RK_PROFILE", "default")
    prof = load_profile(profile, overrides)
    seed_everything(prof.common.seed)
    device = pick_device(prof.common.device)
    try:
        import torch

        torch.set_num_threads(max(1, prof.common.threads))
    except ImportError:  # pragma: no cover
        pass
    out_dir = artifacts_root(prof) / notebook
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(notebook=notebook, profile=prof, out_dir=out_dir, device=device, started=time.time())
    if show:
        print(f"notebook {notebook} | profile {prof.name} | device {device} | seed {prof.common.seed}")
        print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items()))
        section = {
            "01_data": "data", "02_train": "train", "03_rationales": "rationales",
            "04_alignment": "alignment", "05_faithfulness": "faithfulness",
            "06_plausibility": "plausibility", "07_guided_learning": "guided", "08_few_shot": "few_shot",
        }.get(notebook)
        shown = {"common": dataclasses.asdict(prof.common)}
        if section:
            shown[section] = dataclasses.asdict(getattr(prof, section))
        print(json.dumps(shown, indent=1, default=str))
    return ctx


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


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
def _package_hash() -> str:
    """Hash of the package sources: a change in rationale_kit re-runs the notebooks."""
    h = hashlib.sha256()
    pkg = ROOT / "rationale_kit"
    for p in sorted(pkg.rglob("*")):
        # the report module does not change what the notebooks compute
        if p.is_file() and p.suffix in {".py", ".yaml", ".txt", ".json"} and "__pycache__" not in p.parts and p != pkg / "report.py":
            h.update(str(p.relative_to(pkg)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _select(only: Iterable[str] | None, start: str | None) -> list[str]:
    def match(token: str) -> str:
        hits = [n for n in NOTEBOOKS if n == token or n[:2] == token.zfill(2)]
        if not hits:
            raise SystemExit(f"unknown notebook {token!r}; the series is {NOTEBOOKS}")
        return hits[0]

    chosen = list(NOTEBOOKS)
    if start:
        chosen = chosen[NOTEBOOKS.index(match(start)):]
    if only:
        wanted = {match(t) for t in only}
        chosen = [n for n in chosen if n in wanted]
    return chosen


def run_series(
    profile: str = "default",
    only: Iterable[str] | None = None,
    start: str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    runs_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Run the notebooks in order with papermill; returns one status dict per notebook.

    A notebook whose source, profile file, overrides, package sources and upstream runs have not
    changed since its last successful run is skipped (``force`` re-runs). A failure keeps the
    executed notebook, says which cell failed and stops the series.
    """
    import logging

    import papermill as pm

    prof = load_profile(profile, overrides)  # validate before starting anything
    profile_file = Path(profile) if Path(profile).suffix else ROOT / "params" / f"{profile}.yaml"
    runs = Path(runs_dir) if runs_dir else ROOT / "runs" / prof.name
    runs.mkdir(parents=True, exist_ok=True)
    state_path = runs / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    os.environ["PAPERMILL_EXECUTION"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    base = hashlib.sha256()
    base.update(profile_file.read_bytes())
    base.update(json.dumps(overrides or {}, sort_keys=True).encode())
    base.update(_package_hash().encode())
    upstream_key = ""
    results = []
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    chosen = _select(only, start)
    for i, name in enumerate(chosen, 1):
        src = nb_dir / f"{name}.ipynb"
        out = runs / f"{name}.ipynb"
        if not src.exists():
            print(f"[{i}/{len(chosen)}] {name}: notebook not found at {src}; stopping")
            results.append({"notebook": name, "status": "missing"})
            break
        key = hashlib.sha256(base.digest() + src.read_bytes() + upstream_key.encode()).hexdigest()[:16]
        upstream_key = key
        manifest = artifacts_root(prof) / name / "manifest.json"
        prev = state.get(name, {})
        if not force and prev.get("key") == key and manifest.exists() and out.exists():
            print(f"[{i}/{len(chosen)}] {name}: unchanged since its last run, skipped ({prev.get('seconds')} s then)")
            results.append({"notebook": name, "status": "skipped", "seconds": prev.get("seconds"), "output": str(out)})
            continue
        print(f"[{i}/{len(chosen)}] {name}: running -> {out}", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(
                str(src), str(out), parameters={"profile": str(profile), "overrides": overrides or {}},
                kernel_name="python3", log_output=True, progress_bar=False, cwd=str(nb_dir),
            )
        except pm.PapermillExecutionError as exc:
            secs = round(time.time() - t0, 1)
            print(
                f"[{i}/{len(chosen)}] {name}: FAILED after {secs} s in cell {exc.exec_count} "
                f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                f"the executed notebook with the traceback is kept at {out}"
            )
            state.pop(name, None)
            state_path.write_text(json.dumps(state, indent=1))
            results.append({"notebook": name, "status": "failed", "seconds": secs, "output": str(out), "error": f"{exc.ename}: {exc.evalue}"})
            break
        secs = round(time.time() - t0, 1)
        state[name] = {"key": key, "seconds": secs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        state_path.write_text(json.dumps(state, indent=1))
        print(f"[{i}/{len(chosen)}] {name}: done in {secs} s", flush=True)
        results.append({"notebook": name, "status": "ok", "seconds": secs, "output": str(out)})
    _write_provenance(prof, results, runs)
    report_line = _report(prof, runs, results, profile)
    print("\noutputs:")
    print(f"  executed notebooks: {runs}")
    print(f"  artifacts:          {artifacts_root(prof)}")
    print(f"  figures:            {figures_dir(prof)}")
    print(f"  report:             {report_line}")
    for r in results:
        print(f"  {r['notebook']:<20} {r['status']:<8} {r.get('seconds', '')}")
    return results


def _report(prof: Profile, runs: Path, results: list[dict], profile: str) -> str:
    """Write the run report; a failure is described, never raised, so notebook results stay visible."""
    try:
        from .report import build_report

        html_path, md_path = build_report(prof, runs, results)
        return f"{html_path} (and {md_path.name})"
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc(file=sys.stderr)
        return (f"NOT WRITTEN: building the report failed ({type(exc).__name__}: {exc}); the notebook "
                f"results are unaffected; retry with: python -m rationale_kit report --profile {profile}")


def _write_provenance(prof: Profile, results: list[dict], runs: Path) -> None:
    fig_dir = figures_dir(prof)
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Provenance of these figures",
        "",
        f"- profile: `{prof.name}`; dataset: `{prof.common.dataset}`; LLM backend: `{prof.rationales.llm.backend}`",
        f"- git commit: `{_git_commit()}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- executed notebooks: `{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`",
        "",
        "| notebook | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['notebook']} | {r['status']} | {r.get('seconds', '')} |" for r in results]
    (fig_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
