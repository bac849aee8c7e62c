"""Notebook context (``setup``), artifacts with manifests, and the papermill runner."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

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


class StaleArtifact(RuntimeError):
    """An upstream artifact differs from the hash its notebook's manifest recorded (or is gone)."""


class RunLocked(RuntimeError):
    """Another run of the same profile is in progress."""


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
        """Folder of an upstream notebook's artifacts; fails at once when it has not been run, or
        when one of its files differs from the hash in its manifest (:class:`StaleArtifact`)."""
        d = self.artifacts_root / notebook
        rerun = (f"python -m rationale_kit run --profile {self.profile.name} --only {notebook[:2]}")
        if not (d / "manifest.json").exists():
            raise MissingArtifact(
                f"{self.notebook} needs the artifacts of {notebook} for profile "
                f"{self.profile.name!r} ({d} has no manifest): run notebooks/{notebook}.ipynb first "
                f"({rerun})"
            )
        if notebook not in self._verified:
            verify_artifacts(d, rerun)
            self._verified.add(notebook)
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
        outputs = sorted(q for q in self.out_dir.rglob("*") if q.is_file() and q.name != "manifest.json"
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
        path = self.out_dir / "manifest.json"
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str))  # the notebook's last write
        return path


def verify_artifacts(folder: str | os.PathLike, rerun: str = "") -> dict:
    """Check every file listed in ``folder/manifest.json``'s ``output_hashes`` against its hash;
    returns the manifest. A missing or changed file raises :class:`StaleArtifact` naming the file and
    the notebook to re-run; an unreadable manifest raises it too."""
    folder = Path(folder)
    path = folder / "manifest.json"
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
    (out_dir / "manifest.json").unlink(missing_ok=True)
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


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
def _package_hash() -> str:
    """Hash of the package sources: a change in rationale_kit re-runs the notebooks."""
    h = hashlib.sha256()
    pkg = ROOT / "rationale_kit"
    for p in sorted(pkg.rglob("*")):
        # the report module does not change what the notebooks compute
        if p.is_file() and p.suffix in {".py", ".yaml", ".txt", ".json"} and "__pycache__" not in p.parts and p != pkg / "workbook" / "report.py":
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


def _load_state(state_path: Path) -> dict:
    """The runner's ``state.json``; an unreadable one counts as "nothing done" (with a warning)."""
    if not state_path.exists():
        return {}
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise ValueError("not a JSON object of notebook entries")
        return state
    except (OSError, ValueError) as exc:
        print(f"warning: {state_path} is unreadable ({type(exc).__name__}: {exc}); treating every "
              "notebook as not run")
        return {}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class _ProfileLock:
    """``runs/<profile>/.lock`` holding the runner's pid: a second run of the same profile is refused
    while the first is alive; a lock left by a dead process is taken over (with a message)."""

    def __init__(self, path: Path, profile: str):
        self.path, self.profile, self.held = path, profile, False

    def __enter__(self) -> "_ProfileLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text(encoding="utf-8"))
                    pid = int(info.get("pid", 0))
                except (OSError, ValueError, AttributeError, TypeError):
                    info, pid = {}, 0
                if _pid_alive(pid) and pid != os.getpid():
                    raise RunLocked(
                        f"another run of profile {self.profile!r} is in progress (pid {pid}, started "
                        f"{info.get('started', '?')}; lock {self.path}); wait for it to finish, or stop it first"
                    ) from None
                print(f"note: removing the stale lock {self.path} of a run that is no longer alive (pid {pid or '?'})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, fh)
            self.held = True
            return self
        raise RunLocked(f"could not take the lock {self.path} of profile {self.profile!r}")  # pragma: no cover

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _upstream_digest(prof: Profile, name: str) -> bytes:
    """What the earlier notebooks of the series left for ``name``: each one's output hashes (from its
    manifest), or a marker when it has none, whether or not it is in this run's selection."""
    h = hashlib.sha256()
    for up in NOTEBOOKS[: NOTEBOOKS.index(name)] if name in NOTEBOOKS else []:
        path = artifacts_root(prof) / up / "manifest.json"
        h.update(up.encode())
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            h.update(json.dumps(m.get("output_hashes", m), sort_keys=True, default=str).encode())
        except (OSError, ValueError, AttributeError):
            h.update(b"<none>")
    return h.digest()


def _resolve_profile(profile: str | os.PathLike) -> tuple[str, Path]:
    """``(what the notebooks get, the profile file)``: a path (relative to the caller's working
    directory) becomes absolute, since the notebooks run in notebooks/; a name stays a name."""
    p = Path(profile)
    if p.suffix:
        p = p.expanduser().resolve()
        return str(p), p
    return str(profile), ROOT / "params" / f"{profile}.yaml"


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

    A notebook is skipped when its source, the profile file, the overrides, the package sources and
    the outputs of every earlier notebook of the series (their manifests' hashes, whether or not
    they are selected now) have not changed since its last *finished* run (``force`` re-runs). A
    notebook is marked as running in ``state.json`` before it starts and as done only after it
    returned; a run killed part-way is never taken as done, and its partial executed notebook is
    renamed ``<name>.partial.ipynb``. A failure keeps the executed notebook, says which cell failed
    and stops the series. The kernel imports ``rationale_kit`` from this checkout (``PYTHONPATH``).
    A second run of the same profile while one is alive is refused (:class:`RunLocked`).
    """
    import logging

    import papermill as pm

    nb_profile, profile_file = _resolve_profile(profile)
    prof = load_profile(nb_profile, overrides)  # validate before starting anything
    runs = Path(runs_dir) if runs_dir else ROOT / "runs" / prof.name
    runs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    os.environ["PAPERMILL_EXECUTION"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the kernel must import this checkout's package, not wherever the environment's editable
    # install points (one environment shared by two checkouts)
    paths = [str(ROOT)] + [q for q in os.environ.get("PYTHONPATH", "").split(os.pathsep) if q and q != str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    with _ProfileLock(runs / ".lock", prof.name):
        results = _run_locked(pm, prof, nb_profile, profile_file, only, start, force, overrides, runs, notebooks_dir)
    _write_provenance(prof, results, runs)
    report_line = _report(prof, runs, results, str(profile))
    print("\noutputs:")
    print(f"  executed notebooks: {runs}")
    print(f"  artifacts:          {artifacts_root(prof)}")
    print(f"  figures:            {figures_dir(prof)}")
    print(f"  report:             {report_line}")
    for r in results:
        print(f"  {r['notebook']:<20} {r['status']:<8} {r.get('seconds', '')}")
    return results


def _run_locked(pm: Any, prof: Profile, nb_profile: str, profile_file: Path, only: Iterable[str] | None,
                start: str | None, force: bool, overrides: dict | None, runs: Path,
                notebooks_dir: str | os.PathLike | None) -> list[dict]:
    state_path = runs / "state.json"
    state = _load_state(state_path)
    base = hashlib.sha256()
    base.update(profile_file.read_bytes())
    base.update(json.dumps(overrides or {}, sort_keys=True).encode())
    base.update(_package_hash().encode())
    results = []
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    chosen = _select(only, start)
    for name, entry in list(state.items()):  # runs that never finished (killed, machine lost)
        if entry.get("status") == "running":
            partial = runs / f"{name}.running.ipynb"
            note = ""
            if partial.exists():
                os.replace(partial, runs / f"{name}.partial.ipynb")
                note = f"; its partial executed notebook is kept as {runs / f'{name}.partial.ipynb'}"
            print(f"note: the run of {name} started {entry.get('started', '?')} (pid {entry.get('pid', '?')}) "
                  f"never finished, so it counts as not run{note}")
            state[name] = {"status": "interrupted", "started": entry.get("started")}
    atomic_write_text(state_path, json.dumps(state, indent=1))
    for i, name in enumerate(chosen, 1):
        src = nb_dir / f"{name}.ipynb"
        out = runs / f"{name}.ipynb"
        running = runs / f"{name}.running.ipynb"
        if not src.exists():
            print(f"[{i}/{len(chosen)}] {name}: notebook not found at {src}; stopping")
            results.append({"notebook": name, "status": "missing"})
            break
        key = hashlib.sha256(base.digest() + src.read_bytes() + _upstream_digest(prof, name)).hexdigest()[:16]
        manifest = artifacts_root(prof) / name / "manifest.json"
        prev = state.get(name, {})
        if (not force and prev.get("status", "done") == "done" and prev.get("key") == key
                and manifest.exists() and out.exists()):
            print(f"[{i}/{len(chosen)}] {name}: unchanged since its last run, skipped ({prev.get('seconds')} s then)")
            results.append({"notebook": name, "status": "skipped", "seconds": prev.get("seconds"), "output": str(out)})
            continue
        print(f"[{i}/{len(chosen)}] {name}: running -> {out}", flush=True)
        state[name] = {"status": "running", "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(state_path, json.dumps(state, indent=1))
        out.unlink(missing_ok=True)  # the previous result no longer describes the artifacts
        t0 = time.time()
        try:
            pm.execute_notebook(
                str(src), str(running), parameters={"profile": nb_profile, "overrides": overrides or {}},
                kernel_name="python3", log_output=True, progress_bar=False, cwd=str(nb_dir),
            )
        except pm.PapermillExecutionError as exc:
            secs = round(time.time() - t0, 1)
            if running.exists():
                os.replace(running, out)
            print(
                f"[{i}/{len(chosen)}] {name}: FAILED after {secs} s in cell {exc.exec_count} "
                f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                f"the executed notebook with the traceback is kept at {out}"
            )
            state[name] = {"status": "failed", "seconds": secs, "error": f"{exc.ename}: {exc.evalue}"}
            atomic_write_text(state_path, json.dumps(state, indent=1))
            results.append({"notebook": name, "status": "failed", "seconds": secs, "output": str(out), "error": f"{exc.ename}: {exc.evalue}"})
            break
        secs = round(time.time() - t0, 1)
        os.replace(running, out)
        state[name] = {"status": "done", "key": key, "seconds": secs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(state_path, json.dumps(state, indent=1))
        print(f"[{i}/{len(chosen)}] {name}: done in {secs} s", flush=True)
        results.append({"notebook": name, "status": "ok", "seconds": secs, "output": str(out)})
    return results


def _report(prof: Profile, runs: Path, results: list[dict], profile: str) -> str:
    """Write the run report; a failure is described, never raised, so notebook results stay visible."""
    try:
        from rationale_kit.workbook.report import build_report

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
        f"- git commit: `{git_commit()}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- executed notebooks: `{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`",
        "",
        "| notebook | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['notebook']} | {r['status']} | {r.get('seconds', '')} |" for r in results]
    (fig_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
