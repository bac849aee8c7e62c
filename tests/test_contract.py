"""The artifact contract enforces itself: ctx.write checks the writer and the declared columns,
ctx.read checks the manifest, the hash and the declared readers; notebook 08 reuses a student of
notebook 07 only under an equal key."""
import json

import pandas as pd
import pytest

from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.artifacts import ContractError
from rationale_kit.workbook.context import StaleArtifact, setup


def _ctx(tmp_path, notebook):
    return setup(notebook, "smoke", {"common": {"artifacts_dir": str(tmp_path)}}, show=False)


def _preds():
    return pd.DataFrame({"note_id": ["n1"], "code": ["E11.9"], "prob": [0.9], "pred": [True], "is_gold": [True],
                         "model": ["caml"]})


def test_a_table_written_by_its_writer_is_read_back_by_a_declared_reader(tmp_path):
    ctx = _ctx(tmp_path, "02_train")
    path = ctx.write(A.PREDICTIONS, _preds())
    assert path == tmp_path / "smoke" / "02_train" / "predictions.parquet"
    assert not list(path.parent.glob("*.tmp"))  # written atomically, nothing left behind
    ctx.save_manifest()
    got = _ctx(tmp_path, "03_rationales").read(A.PREDICTIONS)
    pd.testing.assert_frame_equal(got, _preds())


def test_a_missing_declared_column_is_refused_naming_it(tmp_path):
    ctx = _ctx(tmp_path, "02_train")
    with pytest.raises(ContractError, match=r"02_train/predictions.parquet: missing declared column\(s\) 'is_gold'"):
        ctx.write(A.PREDICTIONS, _preds().drop(columns="is_gold"))
    assert not (tmp_path / "smoke" / "02_train" / "predictions.parquet").exists()


def test_only_the_declared_writer_may_write(tmp_path):
    ctx = _ctx(tmp_path, "03_rationales")
    with pytest.raises(ContractError, match="03_rationales may not write 02_train/predictions.parquet"):
        ctx.write(A.PREDICTIONS, _preds())
    with pytest.raises(ContractError, match="read it with ctx.read"):
        ctx.path(A.PREDICTIONS)


def test_an_undeclared_reader_is_refused(tmp_path):
    ctx = _ctx(tmp_path, "02_train")
    ctx.write(A.PREDICTIONS, _preds())
    ctx.save_manifest()
    # 04_alignment is not among the predictions' readers
    with pytest.raises(ContractError, match="04_alignment is not a declared reader of 02_train/predictions.parquet"):
        _ctx(tmp_path, "04_alignment").read(A.PREDICTIONS)


def test_a_changed_artifact_is_stale_and_an_unrun_one_is_optional(tmp_path):
    ctx = _ctx(tmp_path, "02_train")
    path = ctx.write(A.PREDICTIONS, _preds())
    ctx.save_manifest()
    reader = _ctx(tmp_path, "03_rationales")
    assert reader.read(A.PREDICTIONS, optional=True) is not None
    _preds().assign(prob=0.1).to_parquet(path, index=False)
    with pytest.raises(StaleArtifact, match="was changed after 02_train wrote it"):
        _ctx(tmp_path, "05_faithfulness").read(A.PREDICTIONS)
    # 07 has not run: an optional read is None, a plain read names the notebook to run
    assert _ctx(tmp_path, "08_few_shot").read(A.SWEEP, optional=True) is None
    with pytest.raises(Exception, match="run notebooks/07_guided_learning.ipynb first"):
        _ctx(tmp_path, "08_few_shot").read(A.SWEEP)


def test_json_artifacts_and_declared_indexes(tmp_path):
    ctx = _ctx(tmp_path, "02_train")
    path = ctx.write(A.THRESHOLDS, {"caml": 0.25})
    assert json.loads(path.read_text()) == {"caml": 0.25}
    with pytest.raises(ContractError, match="expected a JSON object"):
        ctx.write(A.THRESHOLDS, pd.DataFrame())
    table = pd.DataFrame({"micro_f1": [0.5], "labels": [3]}, index=pd.Index(["caml"], name="model"))
    ctx.write(A.CODING_TABLE, table, index=True)
    with pytest.raises(ContractError, match="'model'"):
        ctx.write(A.CODING_TABLE, table.reset_index(drop=True))


def test_every_artifact_declares_a_checkable_contract():
    for a in A.ARTIFACTS:
        assert a.writer[:2].isdigit(), a.key
        assert a.required_columns or a.columns == () or any("<" in c or "..." in c or "(index)" in c for c in a.columns)
        for r in a.readers:
            assert r == "report" or r >= a.writer, f"{a.key} is read by {r}, which runs before its writer"


def test_dataset_subset_keeps_order_spans_and_refuses_unknown_ids():
    from rationale_kit.core.records import DataError
    from rationale_kit.data.dataset import Dataset

    docs = pd.DataFrame({"note_id": ["a", "b", "c"], "text": ["x", "y", "z"], "codes": [["A"], ["B"], ["C"]],
                         "split": ["test"] * 3})
    spans = pd.DataFrame({"note_id": ["a", "c", "c"], "code": ["A", "C", "C"], "start": [0, 0, 0], "end": [1, 1, 1]})
    ds = Dataset("toy", docs, spans, pd.DataFrame({"code": ["A", "B", "C"]}), {"kept": 3})
    sub = ds.subset(["c", "a"])
    assert list(sub.docs.note_id) == ["a", "c"] and list(sub.spans.note_id) == ["a", "c", "c"]
    assert sub.codes is ds.codes and sub.report == {"kept": 3} and sub.name == "toy"
    with pytest.raises(DataError, match="toy: subset names 1 unknown note id"):
        ds.subset(["a", "zz"])


def test_the_tradeoff_table_keeps_its_declared_columns_when_no_teacher_has_rationales(tmp_path):
    from rationale_kit.workbook.protocols.guided import TRADEOFF_COLUMNS

    empty = pd.DataFrame([], columns=TRADEOFF_COLUMNS)
    ctx = _ctx(tmp_path, "07_guided_learning")
    ctx.write(A.TRADEOFF, empty)  # an empty table with the declared columns is a table
    with pytest.raises(ContractError, match="missing declared column"):
        ctx.write(A.TRADEOFF, pd.DataFrame())


def test_a_student_is_reused_only_under_an_equal_key():
    import dataclasses

    from rationale_kit.core.config import load_profile
    from rationale_kit.data.dataset import Dataset
    from rationale_kit.workbook.protocols.guided import student_key

    docs = pd.DataFrame({"note_id": ["a", "b"], "text": ["x y", "z"], "codes": [["A"], ["B"]], "split": ["train", "test"]})
    ds = Dataset("toy", docs, pd.DataFrame(columns=["note_id", "code", "start", "end"]), pd.DataFrame({"code": ["A", "B"]}))
    prof = load_profile("smoke")
    key = lambda p=prof, tg={("a", "A"): [(0, 1)]}, d=ds, lam=1.0: student_key("caml", "human", lam, tg, d, ["A", "B"], p)
    assert key() == key() and key().startswith("k")
    changed = [
        key(p=load_profile("smoke", {"guided": {"epochs": prof.guided.epochs + 1}})),  # one guided setting
        key(p=load_profile("smoke", {"common": {"seed": prof.common.seed + 1}})),  # the seed
        key(p=dataclasses.replace(prof, train=dataclasses.replace(prof.train, caml=dataclasses.replace(prof.train.caml, lr=0.5)))),
        key(tg={("a", "A"): [(0, 2)]}),  # the teacher's spans
        key(d=Dataset("toy", docs.assign(text=["x w", "z"]), ds.spans, ds.codes)),  # a note's text
        key(lam=2.0),
    ]
    assert len({key(), *changed}) == 1 + len(changed)


def test_students_trained_in_08_carry_every_declared_column(monkeypatch, tmp_path):
    """A student 08 trains itself (no 07 row to reuse: another lambda, another teacher) has the
    columns a reused one has; on CodiEsp, where few_shot.lam is not among guided.lambdas, 08 used to
    stop at students.csv without 'init'."""
    from types import SimpleNamespace

    import pandas as pd

    from rationale_kit.core.config import load_profile
    from rationale_kit.workbook.protocols import fewshot, guided

    def fake_fit(name, profile, docs, labels, out_dir, *a, **k):  # what fit_model leaves: the run's folder
        out_dir.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(model=None, threshold=0.5)

    monkeypatch.setattr(guided, "fit_model", fake_fit)
    monkeypatch.setattr(guided, "evaluate_student",
                        lambda *a, **k: {"micro_f1": 0.5, "counts": pd.DataFrame({"note_id": ["n1"], "tp": [1]})})
    prof = load_profile("smoke", {"guided": {"init": "scratch"}})
    ds = SimpleNamespace(docs=pd.DataFrame({"note_id": ["n1"], "text": ["a note"], "codes": [["I10"]], "split": ["train"]}))
    rows = fewshot.few_shot_students(ds, ["I10"], {"human": {}}, prof, tmp_path, sweep=None)
    assert rows.loc[rows.teacher == "none", "init"].tolist() == ["scratch"]
    assert rows.loc[rows.teacher == "none", "trained_in"].tolist() == ["08_few_shot"]
