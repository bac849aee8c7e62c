"""benchmarks/series.py: the side-by-side table of two runs' state files (hand-made states)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import series  # noqa: E402


def _state(folder: Path, entries: dict) -> Path:
    (folder / "runs" / "default").mkdir(parents=True)
    (folder / "runs" / "default" / "state.json").write_text(json.dumps(entries))
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
