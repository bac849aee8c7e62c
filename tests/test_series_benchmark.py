"""benchmarks/series.py: the side-by-side table of two runs' state files (hand-made states)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import series  # noqa: E402


def _state(folder: Path, entries: dict, notebooks=series.NOTEBOOKS) -> Path:
    (folder / "runs" / "default").mkdir(parents=True)
    (folder / "runs" / "default" / "state.json").write_text(json.dumps(entries))
    (folder / "notebooks").mkdir()
    for nb in notebooks:
        (folder / "notebooks" / f"{nb}.ipynb").write_text("{}")
    return folder


def test_table_side_by_side_with_totals_over_notebooks_both_finished(tmp_path, capsys):
    a = _state(tmp_path / "a", {"01_data": {"status": "done", "seconds": 20.0},
                                "02_train": {"status": "done", "seconds": 200.0},
                                "05_faithfulness": {"status": "done", "seconds": 120.0}})
    b = _state(tmp_path / "b", {"01_data": {"status": "done", "seconds": 10.0},
                                "02_train": {"status": "done", "seconds": 150.0},
                                "05_faithfulness": {"status": "failed", "seconds": 3.0}})
    assert series.main(["--read", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    row = {line.split()[0]: line.split()[1:] for line in out if line[:2] in ("01", "02", "05", "su")}
    assert row["01_data"] == ["20.0", "10.0", "-10.0", "2.00"]
    assert row["02_train"] == ["200.0", "150.0", "-50.0", "1.33"]
    assert row["05_faithfulness"] == ["120.0", "failed"]  # no difference for a run that did not finish
    # totals over 01 and 02 only: 220 vs 160
    assert row["sum"][-4:] == ["220.0", "160.0", "-60.0", "1.38"]


def test_missing_or_bad_state_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no run state at"):
        series.main(["--read", str(tmp_path)])
    bad = tmp_path / "bad"
    (bad / "runs" / "default").mkdir(parents=True)
    (bad / "runs" / "default" / "state.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        series.main(["--read", str(bad)])


def test_interleave_alternates_the_first_source_and_stops_a_failed_side(tmp_path, monkeypatch):
    """Notebook by notebook, A B then B A and so on; a side whose notebook fails runs nothing more."""
    a, b = _state(tmp_path / "a", {}), _state(tmp_path / "b", {})
    calls = []

    def fake_run(checkout, profile, log, only=None):
        calls.append((checkout.name, only))
        path = checkout / "runs" / profile / "state.json"
        state = json.loads(path.read_text())
        failed = checkout.name == "b" and only == "03_rationales"
        state[only] = {"status": "failed" if failed else "done", "seconds": 1.0}
        path.write_text(json.dumps(state))
        return 2.0

    monkeypatch.setattr(series, "run_series", fake_run)
    walls = series.interleaved([a, b], "default", [tmp_path / "a.log", tmp_path / "b.log"])
    assert calls[:6] == [("a", "01_data"), ("b", "01_data"), ("b", "02_train"), ("a", "02_train"),
                         ("a", "03_rationales"), ("b", "03_rationales")]
    assert [c for c in calls if c[0] == "b"] == [("b", n) for n in series.NOTEBOOKS[:3]]
    assert [c for c in calls if c[0] == "a"] == [("a", n) for n in series.NOTEBOOKS]
    assert [sum(w.values()) for w in walls] == [2.0 * len(series.NOTEBOOKS), 6.0]


def test_interleave_skips_a_notebook_one_side_lacks_and_compares_the_common_wall(tmp_path, monkeypatch, capsys):
    """An older commit without notebook 09: it is not run there (said so), the other side runs it,
    and a last line compares the walls of the notebooks both ran."""
    a = _state(tmp_path / "a", {}, notebooks=series.NOTEBOOKS[:-1])
    b = _state(tmp_path / "b", {})
    calls = []

    def fake_run(checkout, profile, log, only=None):
        calls.append((checkout.name, only))
        path = checkout / "runs" / profile / "state.json"
        state = json.loads(path.read_text())
        state[only] = {"status": "done", "seconds": 3.0 if checkout.name == "a" else 2.0}
        path.write_text(json.dumps(state))
        return 3.0 if checkout.name == "a" else 2.0

    monkeypatch.setattr(series, "run_series", fake_run)
    walls = series.interleaved([a, b], "default", [tmp_path / "a.log", tmp_path / "b.log"])
    last = series.NOTEBOOKS[-1]
    assert ("a", last) not in calls and ("b", last) in calls
    assert f"has no notebook {last}" in capsys.readouterr().out
    states = [series.read_state(c, "default") for c in (a, b)]
    out = series.table(["a", "b"], states, [sum(w.values()) for w in walls], walls).splitlines()
    n = len(series.NOTEBOOKS) - 1
    assert out[-1].split()[:7] == ["wall,", "both", "ran", f"{3.0 * n:.1f}", f"{2.0 * n:.1f}", f"{-1.0 * n:+.1f}", "1.50"]
