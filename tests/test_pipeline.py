"""setup(), artifacts and the papermill runner (on throw-away notebooks)."""
import json

import nbformat
import pytest

from rationale_kit import pipeline
from rationale_kit.pipeline import MissingArtifact, run_series, setup


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


def test_runner_skips_unchanged_and_reports_failures(tmp_path, capsys):
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


def test_select_by_number_and_name():
    assert pipeline._select(["3", "05_faithfulness"], None) == ["03_rationales", "05_faithfulness"]
    assert pipeline._select(None, "07")[0] == "07_guided_learning"
    with pytest.raises(SystemExit):
        pipeline._select(["99"], None)
