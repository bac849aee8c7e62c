"""Fixtures shared by the whole test suite (pytest loads this file before the test modules).

Expensive things are done once per pytest session and shared; nothing is cached across sessions,
so every session tests the code as it is now.

``smoke_series`` (session)
    The notebook series 01-09 executed once, through the papermill runner, on the ``smoke``
    profile (made smaller by ``SMOKE_SERIES_OVERRIDES``) into a fresh temporary folder
    (``force=True``: nothing is resumed), by a child process started right after collection when
    a selected test asks for the fixture: the notebooks run in their kernels on one core while the
    other tests run on the other; the first test that asks waits for the rest. Any test that needs
    executed notebooks, their artifacts, figures or the run report asks for this fixture instead
    of running notebooks itself::

        def test_my_table(smoke_series):
            table = pd.read_csv(smoke_series.path("06_plausibility", "plausibility_table.csv"))

    ``smoke_series.path(notebook, *parts)`` fails the test (with the notebook's error) unless that
    notebook finished; ``smoke_series.require(*notebooks)`` does the same without a path. The
    artifacts are shared: **read them, never change them** (copy what you must modify into
    ``tmp_path``). The LLM teachers of notebook 03 answer from ``tests/data/smoke_llm_replay.jsonl``
    (the ``replay`` backend): the bundled local model's answers to exactly the prompts notebook 03
    sends on the smoke profile, recorded by ``tools/record_smoke_replay.py``. When prompts, the
    smoke data or the local backend change, re-record them with that tool (the fixture then says
    so); ``RK_SMOKE_LLM=local`` runs the series with the real local model instead.

``inprocess_notebooks``
    While a test holds it, the papermill runner executes notebooks in the test's own process
    (each code cell ``exec``-ed in one namespace, stdout kept as the cell's output, the first
    exception recorded as the cell's error output, so papermill raises as for a kernel) instead of
    starting a Jupyter kernel (~3 s each, with ``import torch``). For tests of the runner's own
    logic (state, skipping, locks) on throw-away notebooks that only print and write files; a test
    about kernels (working directory, imports, a killed process) needs a real kernel. Returns the
    list of notebooks so executed. Subprocesses the test starts still use real kernels.

``smollm`` (session), ``smollm_tokenizer`` (session) and ``local_llm``
    The bundled SmolLM2-135M-Instruct loaded (GGUF de-quantised) once per session, and its
    tokenizer (loaded alone when only that is asked for; the same object as ``smollm``'s);
    ``local_llm(**settings)`` is a ``LocalBackend`` with those settings over that loaded model.
    ``smollm`` is skipped when ``RK_SKIP_LOCAL_LLM`` is set.
"""
from __future__ import annotations

import contextlib
import io
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

# The shared smoke series runs in a child process beside the other tests (its kernels inherit this
# environment). Two processes whose OpenMP threads spin while idle (the default ACTIVE policy) on
# the same two cores slow each other several-fold: a fresh clone's suite took 731 s of pytest
# without this and 179 s with it. Set before torch is imported here or in the child.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TESTS_DIR = Path(__file__).resolve().parent
#: recorded answers of the local backend to every prompt notebook 03 sends on the smoke profile
SMOKE_REPLAY = TESTS_DIR / "data" / "smoke_llm_replay.jsonl"
RECORD_TOOL = "tools/record_smoke_replay.py"
#: environment variables run_series sets for its kernels (restored after the shared run)
_RUNNER_ENV = ("PAPERMILL_EXECUTION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")


@dataclass(frozen=True)
class SeriesRun:
    """One execution of the notebook series: where everything went and what each notebook did."""

    profile: str  # as given to run_series (a name in params/ or a YAML path)
    overrides: dict  # the overrides every notebook got
    root: Path  # the temporary folder holding everything below
    runs: Path  # executed notebooks, state.json, report.html and report.md
    artifacts: Path  # artifacts/<profile name>/: one folder per notebook
    figures: Path  # figures/<profile name>/
    results: tuple  # run_series's status dicts, one per notebook, in order

    def status(self, notebook: str) -> str | None:
        """``ok`` / ``failed`` / ``missing`` / ..., or None when the series stopped before it."""
        return next((r["status"] for r in self.results if r["notebook"] == notebook), None)

    def require(self, *notebooks: str) -> None:
        """Fail the calling test, with the notebook's error, unless every one of ``notebooks`` ran ok."""
        for name in notebooks:
            if self.status(name) != "ok":
                pytest.fail(f"{name} did not run in the shared series: {self.explain(name)}", pytrace=False)

    def path(self, notebook: str, *parts: str) -> Path:
        """``artifacts/<profile>/<notebook>/<parts>``, after :meth:`require` of ``notebook``."""
        self.require(notebook)
        return self.artifacts.joinpath(notebook, *parts)

    def explain(self, notebook: str) -> str:
        r = next((r for r in self.results if r["notebook"] == notebook), None)
        if r is None:
            failed = [x for x in self.results if x["status"] != "ok"]
            return f"the series stopped earlier ({failed[0]['notebook']}: {failed[0].get('error')})" if failed \
                else "not part of this series"
        text = f"status {r['status']}: {r.get('error')} (executed notebook: {r.get('output')})"
        if "ReplayMissError" in str(r.get("error")):
            text += (f"; the recorded LLM answers ({SMOKE_REPLAY.relative_to(TESTS_DIR.parent)}) no longer match "
                     f"the prompts of notebook 03: re-record them with `python {RECORD_TOOL}`, or run the "
                     "tests with RK_SMOKE_LLM=local")
        return text


def smoke_llm_overrides() -> dict:
    """The LLM settings of the shared series: the recorded answers (``replay``), or the real local
    model when ``RK_SMOKE_LLM=local``."""
    mode = os.environ.get("RK_SMOKE_LLM", "replay")
    if mode == "local":
        return {}
    if mode != "replay":
        raise pytest.UsageError(f"RK_SMOKE_LLM must be 'replay' or 'local', not {mode!r}")
    return {"rationales": {"llm": {"backend": "replay", "replay_file": str(SMOKE_REPLAY)}}}


def run_series_into(root: Path, profile: str = "smoke", overrides: dict | None = None, **kw) -> SeriesRun:
    """``run_series`` into a fresh folder ``root`` (artifacts, figures and runs below it, forced),
    the environment restored afterwards. ``kw`` goes to run_series (``only``, ...)."""
    from rationale_kit.core.config import load_profile
    from rationale_kit.workbook.runner import run_series

    over = {**(overrides or {})}
    over["common"] = {**over.get("common", {}), "artifacts_dir": str(root / "artifacts"),
                      "figures_dir": str(root / "figures")}
    name = load_profile(profile, over).name
    with pytest.MonkeyPatch.context() as mp:
        for var in _RUNNER_ENV:  # run_series sets them for its kernels; put them back after
            if var in os.environ:
                mp.setenv(var, os.environ[var])
            else:
                mp.delenv(var, raising=False)
        results = run_series(profile, force=True, runs_dir=root / "runs", overrides=over, **kw)
    return SeriesRun(profile, over, root, root / "runs", root / "artifacts" / name, root / "figures" / name,
                     tuple(results))


#: Smaller than the smoke profile where no test reads the number, with the same code paths:
#: - PLM-ICD on half the smoke profile's word pieces (2 chunks of 32, not 64) and half its optimizer
#:   steps: every note still fills both chunks, so the multi-chunk encoder path, truncation and the
#:   LAAT head run as before; about half the encoder work in 02, 03 and 05, where PLM-ICD was two
#:   thirds of the series' compute. No test asserts on a PLM-ICD number of the series; the LLM
#:   prompts of notebook 03 do not depend on the models.
#: - notebook 06 binarises soft rationales by top-10 only (``rationales.topk``, the k its comparisons
#:   use), not also top-5 and top-20: the same loop once instead of three times, 40% of 06's
#:   plausibility cell.
#: - notebook 05 measures 4 pairs per model, not 8 (the engine's batching and every measure as before).
SMOKE_SERIES_OVERRIDES = {"train": {"plm_icd": {"chunk_size": 32, "batch_size": 8}},
                          "plausibility": {"topk": [10]},
                          "faithfulness": {"max_pairs": 4}}


class _BackgroundSeries:
    """The shared series run by a child process (``python tests/conftest.py ROOT``), started as soon
    as the session knows it will need it (after collection): its notebooks run in their kernels
    while the other tests run, instead of all tests waiting for the first one that asks for it."""

    def __init__(self, root: Path):
        import subprocess
        import sys

        self.overrides = {**SMOKE_SERIES_OVERRIDES, **smoke_llm_overrides()}  # checked here, used by the child
        self.root, self.log, self.out = root, root / "series.log", root / "results.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(TESTS_DIR.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        env.setdefault("HF_HUB_OFFLINE", "1")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(root)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def result(self) -> SeriesRun:
        import json

        rc = self.proc.wait()
        log = self.log.read_text(encoding="utf-8", errors="replace")
        print(log)  # the runner's output, shown with a failing test's captured setup output
        if rc != 0 or not self.out.exists():
            pytest.fail(f"the shared smoke series did not finish (exit {rc}); its output ends:\n{log[-3000:]}",
                        pytrace=False)
        done = json.loads(self.out.read_text(encoding="utf-8"))
        return SeriesRun(done["profile"], done["overrides"], self.root, Path(done["runs"]), Path(done["artifacts"]),
                         Path(done["figures"]), tuple(done["results"]))

    def stop(self) -> None:
        if self.proc.poll() is None:  # the session ended first (-x, Ctrl-C): the runner and its kernel
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


_SERIES: dict = {}  # "job": the session's _BackgroundSeries


def _smoke_series_job(tmp_path_factory) -> _BackgroundSeries:
    if "job" not in _SERIES:
        _SERIES["job"] = _BackgroundSeries(tmp_path_factory.mktemp("smoke_series"))
    return _SERIES["job"]


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Start the shared series now when a selected test will ask for it."""
    if any("smoke_series" in getattr(item, "fixturenames", ()) for item in items):
        _smoke_series_job(config._tmp_path_factory)


def pytest_sessionfinish(session, exitstatus):
    if "job" in _SERIES:
        _SERIES["job"].stop()


@pytest.fixture(scope="session")
def smoke_series(tmp_path_factory) -> SeriesRun:
    """The series 01-09 on the smoke profile, executed once per session (see the module docstring)."""
    return _smoke_series_job(tmp_path_factory).result()


def _run_shared_series(root: Path) -> None:
    """The child process of :class:`_BackgroundSeries`: the series into ``root``, its results as JSON."""
    import json

    run = run_series_into(root, "smoke", {**SMOKE_SERIES_OVERRIDES, **smoke_llm_overrides()})
    done = {"profile": run.profile, "overrides": run.overrides, "runs": str(run.runs), "artifacts": str(run.artifacts),
            "figures": str(run.figures), "results": list(run.results)}
    (root / "results.json").write_text(json.dumps(done, default=str), encoding="utf-8")


#: the bundled model's parts loaded so far in this session: "tokenizer" (loaded alone, as a dry run
#: loads it) and "backend" (the loaded LocalBackend over that tokenizer)
_SMOLLM: dict = {}


def _load_smollm(model: bool):
    """The session's tokenizer, and with ``model`` its loaded backend. Whatever is still missing is
    loaded within one parse of the GGUF file (both together: ~13 CPU s instead of 9 + 10)."""
    from rationale_kit.rationales import llm
    from rationale_kit.rationales.llm.backends.local import _reuse_gguf_parsing

    with _reuse_gguf_parsing():
        if "tokenizer" not in _SMOLLM:
            _SMOLLM["tokenizer"] = llm.LocalBackend()._tokenizer()  # the tokenizer alone, as a dry run loads it
        if model and "backend" not in _SMOLLM:
            backend = llm.LocalBackend()
            backend._tok = _SMOLLM["tokenizer"]
            _SMOLLM["backend"] = backend.load()
    return _SMOLLM["backend"] if model else _SMOLLM["tokenizer"]


@pytest.fixture(scope="session")
def smollm():
    """The bundled SmolLM2 ``LocalBackend``, loaded once per session."""
    if os.environ.get("RK_SKIP_LOCAL_LLM"):
        pytest.skip("RK_SKIP_LOCAL_LLM is set")
    return _load_smollm(model=True)


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The bundled model's tokenizer, loaded alone (``LocalBackend._tokenizer``) once per session
    (shared with ``smollm``'s backend when that is loaded; read-only)."""
    return _load_smollm(model=False)


@pytest.fixture
def local_llm(smollm):
    """``local_llm(**settings)``: a ``LocalBackend`` with those settings over the session's loaded
    model (only the decoding settings differ; the tokenizer and weights are shared, read-only)."""
    from rationale_kit.rationales import llm

    def make(**settings) -> llm.LocalBackend:
        if "path" in settings or settings.get("dtype", "float32") != "float32":
            raise ValueError("local_llm shares the bundled float32 model; build LocalBackend(path=..., "
                             "dtype=...) yourself")
        backend = llm.LocalBackend(**settings)
        backend._tok, backend._lm = smollm._tok, smollm._lm  # what load() would set
        return backend

    return make


def _inprocess_engine():
    from nbformat.v4 import new_output
    from papermill.engines import Engine

    class InProcessEngine(Engine):
        """A papermill engine that runs the code cells with ``exec`` in this process."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            from rationale_kit.core.lock import release_kernel_lock

            try:
                cls._execute(nb_man)
            finally:  # the notebook ends here, not with its process: the next run must not wait for it
                release_kernel_lock()

        @classmethod
        def _execute(cls, nb_man):
            namespace: dict = {"__name__": "__main__"}
            count = 0
            for index, cell in enumerate(nb_man.nb.cells):
                if cell.cell_type != "code":
                    continue
                nb_man.cell_start(cell, index)
                count += 1
                cell.execution_count = count
                out, failed = io.StringIO(), None
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(cell.source, f"<cell {index}>", "exec"), namespace)
                except Exception as exc:  # noqa: BLE001 - becomes the cell's error output
                    failed = exc
                if out.getvalue():
                    cell.outputs.append(new_output("stream", name="stdout", text=out.getvalue()))
                if failed is not None:
                    cell.outputs.append(new_output("error", ename=type(failed).__name__, evalue=str(failed),
                                                   traceback=traceback.format_exception(failed)))
                    nb_man.cell_exception(cell, index, exception=failed)
                    nb_man.cell_complete(cell, index)
                    return  # the later cells stay pending, as after a kernel's error
                nb_man.cell_complete(cell, index)

    return InProcessEngine


@pytest.fixture
def inprocess_notebooks(monkeypatch) -> list:
    """Notebooks run by the papermill runner execute in this process (see the module docstring)."""
    import papermill
    from papermill.engines import papermill_engines

    papermill_engines.register("rk-inprocess", _inprocess_engine())
    real, executed = papermill.execute_notebook, []

    def execute_notebook(input_path, *args, **kwargs):
        executed.append(str(input_path))
        return real(input_path, *args, **{**kwargs, "engine_name": "rk-inprocess"})

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return executed


if __name__ == "__main__":  # the shared series' child process (_BackgroundSeries)
    import sys

    _run_shared_series(Path(sys.argv[1]))
