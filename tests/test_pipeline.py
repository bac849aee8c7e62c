"""setup(), artifacts and the papermill runner (on throw-away notebooks)."""
import json

import nbformat
import pytest

from rationale_kit.workbook import runner as pipeline
from rationale_kit.workbook.context import MissingArtifact, StaleArtifact, setup
from rationale_kit.workbook.runner import run_series


def _profile(tmp_path, name="p"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"common:\n  seed: 3\n  device: cpu\n  artifacts_dir: {tmp_path / 'art'}\n  figures_dir: {tmp_path / 'fig'}\n")
    return f


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = None\noverrides = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_setup_and_manifest(tmp_path):
    prof = _profile(tmp_path)
    ctx = setup("01_data", str(prof), show=False)
    assert ctx.out_dir.is_dir() and ctx.profile.common.seed == 3
    (ctx.out_dir / "x.txt").write_text("hello")
    m = json.loads(ctx.save_manifest(inputs=[prof]).read_text())
    assert m["outputs"] == ["x.txt"] and m["profile"] == "p" and m["parameters"]["common"]["seed"] == 3
    ctx2 = setup("02_train", str(prof), show=False)
    assert ctx2.upstream("01_data") == ctx.out_dir
    with pytest.raises(MissingArtifact, match="run notebooks/03_rationales.ipynb first"):
        ctx2.upstream("03_rationales")


def test_setup_env_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("RK_PROFILE", str(_profile(tmp_path, "envp")))
    assert setup("01_data", None, show=False).profile.name == "envp"


def test_runner_skips_unchanged_and_reports_failures(tmp_path, capsys, inprocess_notebooks):
    prof = _profile(tmp_path)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    save = "import rationale_kit as rk\nctx = rk.setup('{n}', profile, overrides)\nctx.save_manifest()\nprint('ran {n}')"
    _notebook(nbs / "01_data.ipynb", save.format(n="01_data"))
    _notebook(nbs / "02_train.ipynb", save.format(n="02_train") + "\nctx.upstream('01_data')")
    runs = tmp_path / "runs"
    res = run_series(str(prof), only=["01", "02"], runs_dir=runs, notebooks_dir=nbs)
    assert [r["status"] for r in res] == ["ok", "ok"]
    assert (runs / "02_train.ipynb").exists()
    res = run_series(str(prof), only=["01", "02"], runs_dir=runs, notebooks_dir=nbs)
    assert [r["status"] for r in res] == ["skipped", "skipped"]
    _notebook(nbs / "02_train.ipynb", save.format(n="02_train") + "\nraise ValueError('boom')")
    res = run_series(str(prof), only=["01", "02"], runs_dir=runs, notebooks_dir=nbs)
    assert [r["status"] for r in res] == ["skipped", "failed"]
    assert "boom" in res[1]["error"]
    out = capsys.readouterr().out
    assert "FAILED" in out and "cell" in out and str(runs / "02_train.ipynb") in out
    assert (tmp_path / "fig" / "PROVENANCE.md").exists() or (tmp_path / "fig" / "p" / "PROVENANCE.md").exists()


def test_change_in_a_base_profile_reruns(tmp_path, inprocess_notebooks):
    """A profile that inherits (``base:``) re-runs when its base changes, though its own file did not."""
    base = _profile(tmp_path, "b")
    top = tmp_path / "top.yaml"
    top.write_text("base: b.yaml\nevaluation:\n  seed: 1\n")
    nbs = _series(tmp_path, which=("01",))
    runs = tmp_path / "runs"
    assert [r["status"] for r in run_series(str(top), only=["01"], runs_dir=runs, notebooks_dir=nbs)] == ["ok"]
    assert [r["status"] for r in run_series(str(top), only=["01"], runs_dir=runs, notebooks_dir=nbs)] == ["skipped"]
    base.write_text(base.read_text().replace("seed: 3", "seed: 4"))
    assert [r["status"] for r in run_series(str(top), only=["01"], runs_dir=runs, notebooks_dir=nbs)] == ["ok"]


def test_select_by_number_and_name():
    assert pipeline._select(["3", "05_faithfulness"], None) == ["03_rationales", "05_faithfulness"]
    assert pipeline._select(None, "07")[0] == "07_guided_learning"
    with pytest.raises(SystemExit):
        pipeline._select(["99"], None)


# --------------------------------------------------------------------------------------------
# runs that never lie
# (tests of the runner's state, skipping and locks execute their throw-away notebooks in-process,
# ``inprocess_notebooks`` in tests/conftest.py; those about kernels start real ones)
# --------------------------------------------------------------------------------------------
import os
import shutil
import signal
import subprocess
import sys
import time

SAVE = ("import rationale_kit as rk\nctx = rk.setup('{n}', profile, overrides)\n{body}\n"
        "ctx.save_manifest()\nprint('ran {n}')")


def _series(tmp_path, body1="(ctx.out_dir / 'a.txt').write_text('one')", body2="ctx.upstream('01_data')",
            which=("01", "02")):
    """Throw-away notebooks 01 and 02 (only those in ``which`` are (re)written: cell ids are random,
    so rewriting one changes its bytes)."""
    nbs = tmp_path / "nbs"
    nbs.mkdir(exist_ok=True)
    if "01" in which:
        _notebook(nbs / "01_data.ipynb", SAVE.format(n="01_data", body=body1))
    if "02" in which:
        _notebook(nbs / "02_train.ipynb", SAVE.format(n="02_train", body=body2))
    return nbs


def test_only_02_reruns_after_upstream_rerun_outside_the_selection(tmp_path, inprocess_notebooks):
    prof, runs = _profile(tmp_path), tmp_path / "runs"
    nbs = _series(tmp_path)
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01", "02"])] == ["ok", "ok"]
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["02"])] == ["skipped"]
    # 01 changes what it writes and is re-run alone; 02 (not selected then) must not be skipped next
    _series(tmp_path, body1="(ctx.out_dir / 'a.txt').write_text('two')", which=("01",))
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01"])] == ["ok"]
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["02"])] == ["ok"]
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["02"])] == ["skipped"]
    assert [p.rsplit("/", 1)[1] for p in inprocess_notebooks] == ["01_data.ipynb", "02_train.ipynb", "01_data.ipynb", "02_train.ipynb"]


def test_changed_upstream_artifact_is_refused_naming_file_and_notebook(tmp_path):
    prof = _profile(tmp_path)
    ctx = setup("01_data", str(prof), show=False)
    (ctx.out_dir / "spans.parquet").write_bytes(b"offsets 0 5")
    m = json.loads(ctx.save_manifest().read_text())
    assert set(m["output_hashes"]) == {"spans.parquet"}
    assert setup("02_train", str(prof), show=False).upstream("01_data") == ctx.out_dir
    (ctx.out_dir / "spans.parquet").write_bytes(b"offsets 1 6")  # same size, shifted
    with pytest.raises(StaleArtifact, match=r"spans.parquet was changed after 01_data.*re-run notebooks/01_data.ipynb.*--only 01"):
        setup("02_train", str(prof), show=False).upstream("01_data")
    (ctx.out_dir / "spans.parquet").unlink()
    with pytest.raises(StaleArtifact, match="spans.parquet is listed .* but missing"):
        setup("02_train", str(prof), show=False).upstream("01_data")
    (ctx.out_dir / "manifest.json").write_text('{"notebook": "01_da')  # truncated
    with pytest.raises(StaleArtifact, match="manifest.json is unreadable"):
        setup("02_train", str(prof), show=False).upstream("01_data")
    # a notebook that starts again is not "done" until it writes its manifest at the end
    setup("01_data", str(prof), show=False)
    with pytest.raises(MissingArtifact):
        setup("02_train", str(prof), show=False).upstream("01_data")


def test_corrupt_state_json_counts_as_nothing_done(tmp_path, capsys, inprocess_notebooks):
    prof, runs = _profile(tmp_path), tmp_path / "runs"
    nbs = _series(tmp_path)
    run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01"])
    (runs / "state.json").write_text('{"01_data": {"key": "ab')  # cut by a full disk
    res = run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01"])
    assert [r["status"] for r in res] == ["ok"]
    assert "state.json is unreadable" in capsys.readouterr().out
    assert json.loads((runs / "state.json").read_text())["01_data"]["status"] == "done"


def test_second_run_of_a_profile_is_locked_out_and_stale_lock_taken_over(tmp_path, capsys, inprocess_notebooks):
    prof, runs = _profile(tmp_path), tmp_path / "runs"
    nbs = _series(tmp_path)
    runs.mkdir()
    # another process holding the lock (it is killed with SIGKILL below: no clean-up of its own)
    other = subprocess.Popen([sys.executable, "-c", "import sys, time; from rationale_kit.core.lock import ProfileLock\n"
                              f"l = ProfileLock({str(runs / '.lock')!r}, 'p').__enter__(); print('held', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(pipeline.RunLocked, match=rf"another run of profile 'p' is in progress \(pid {other.pid}"):
            run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01"])
    finally:
        other.kill()
        other.wait()
    # the same lock of a process that is gone is taken over
    res = run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01"])
    assert [r["status"] for r in res] == ["ok"] and not (runs / ".lock").exists()
    assert "stale lock" in capsys.readouterr().err


def test_relative_profile_path_is_resolved_for_the_notebooks(tmp_path, monkeypatch, inprocess_notebooks):
    """papermill runs every notebook in its folder (``cwd``): in-process too, so a profile path
    relative to the caller's folder must be resolved by the runner before."""
    prof, runs = _profile(tmp_path), tmp_path / "runs"
    nbs = _series(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = run_series(prof.name, runs_dir=runs, notebooks_dir=nbs, only=["01", "02"])  # "p.yaml"
    assert [r["status"] for r in res] == ["ok", "ok"]
    assert (tmp_path / "art" / "p" / "02_train" / "manifest.json").exists()


def test_killed_run_is_not_skipped_and_its_partial_notebook_is_marked(tmp_path, inprocess_notebooks):
    prof, runs = _profile(tmp_path), tmp_path / "runs"
    flag = tmp_path / "started"
    nbs = _series(tmp_path)
    assert [r["status"] for r in run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01", "02"])] == ["ok", "ok"]
    _series(tmp_path, which=("02",), body2=f"ctx.upstream('01_data')\nimport pathlib, time\npathlib.Path({str(flag)!r}).write_text('x')\ntime.sleep(120)")
    code = (f"from rationale_kit.workbook.runner import run_series\n"
            f"run_series({str(prof)!r}, runs_dir={str(runs)!r}, notebooks_dir={str(nbs)!r}, only=['01', '02'], force=True)")
    env = {**os.environ, "PYTHONPATH": str(pipeline.ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if flag.exists():
                break
            time.sleep(0.1)
        assert flag.exists(), "the notebook never started"
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the runner and its kernel
        proc.wait()
    state = json.loads((runs / "state.json").read_text())
    assert state["02_train"]["status"] == "running" and "key" not in state["02_train"]
    assert not (runs / "02_train.ipynb").exists()  # the old result does not pose as this run's
    assert not (tmp_path / "art" / "p" / "02_train" / "manifest.json").exists()
    _series(tmp_path, which=("02",))  # the notebook is fixed; a plain (not forced) run
    res = run_series(str(prof), runs_dir=runs, notebooks_dir=nbs, only=["01", "02"])
    assert [r["status"] for r in res] == ["skipped", "ok"]
    assert (runs / "02_train.partial.ipynb").exists() and not (runs / "02_train.running.ipynb").exists()


def test_kernel_imports_the_package_of_the_checkout_the_runner_runs_in(tmp_path):
    """Two checkouts share one environment: the copy's runner must run the copy's package."""
    copy = tmp_path / "copy"
    shutil.copytree(pipeline.ROOT / "rationale_kit", copy / "rationale_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(pipeline.ROOT / "params", copy / "params")
    (copy / "notebooks").mkdir()
    (copy / "params" / "two.yaml").write_text("common:\n  device: cpu\n")
    _notebook(copy / "notebooks" / "01_data.ipynb", SAVE.format(
        n="01_data", body="(ctx.out_dir / 'where.txt').write_text(rk.__file__)"))
    # the environment (PYTHONPATH here) points at the original checkout, as an editable install would
    env = {**os.environ, "PYTHONPATH": str(pipeline.ROOT)}
    code = "import sys; sys.path.insert(0, sys.argv[1]); from rationale_kit.__main__ import main; sys.exit(main(sys.argv[2:]))"
    out = subprocess.run([sys.executable, "-c", code, str(copy), "run", "--profile", "two", "--only", "01"],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    where = copy / "artifacts" / "two" / "01_data" / "where.txt"
    assert where.exists() and where.read_text() == str(copy / "rationale_kit" / "__init__.py")
    assert not (pipeline.ROOT / "artifacts" / "two").exists()
    assert (copy / "runs" / "two" / "01_data.ipynb").exists()


def test_interfaces_doc_lists_every_declared_artifact():
    from rationale_kit.workbook import artifacts as A

    doc = (pipeline.ROOT / "docs" / "INTERFACES.md").read_text(encoding="utf-8")
    assert A.markdown_table() in doc, "docs/INTERFACES.md: paste artifacts.markdown_table() again"
    for a in A.ARTIFACTS:
        assert f"`{a.key}`" in doc, a.key
    assert len({a.key for a in A.ARTIFACTS}) == len(A.ARTIFACTS)  # one record per file
    assert {a.writer for a in A.ARTIFACTS} <= set(pipeline.NOTEBOOKS)
