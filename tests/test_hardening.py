"""Hardening (issue 25): offsets read by one validation function, the run lock, exit statuses, the
quote command's cache and flags, and the loaders. Each test fails on the code before the fix."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from rationale_kit.cli.measures import compare_main, plausibility_main
from rationale_kit.core.records import DataError, check_offsets, read_spans_jsonl

TEXT = "aa bb cc dd ee ff gg hh ii jj kk ll mm nn oo pp qq rr"


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---- offsets: one validation for gold and predictions ---------------------------------------------

BAD_OFFSETS = [
    ({"start": 12.9, "end": 17.7}, "start is float 12.9"),  # was read as [12, 17): an exact match
    ({"start": 12.0, "end": 17}, "start is float 12.0"),
    ({"start": True, "end": 17}, "start is bool True"),
    ({"start": "12", "end": 17}, "start is str '12'"),
    ({"start": 12, "end": "17"}, "end is str '17'"),
    ({"start": 12, "end": None}, "end is NoneType None"),
]


@pytest.mark.parametrize("offsets, what", BAD_OFFSETS, ids=[w for _, w in BAD_OFFSETS])
def test_predicted_offsets_follow_the_gold_rules(tmp_path, capsys, offsets, what):
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"note_id": "n1", "text": TEXT}])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"note_id": "n1", "code": "I10", "start": 12, "end": 17}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"note_id": "n1", "code": "I10", "start": 0, "end": 2},
                                                 {"note_id": "n1", "code": "I10", **offsets}])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", pred]) == 2
    err = capsys.readouterr().err
    assert f"pred.jsonl:2: start/end must be integers ({what})" in err and len(err.strip().splitlines()) == 1
    assert compare_main(["--docs", docs, "--gold", gold, "--pred-a", pred, "--pred-b", gold]) == 2
    assert f"pred.jsonl:2: start/end must be integers ({what})" in capsys.readouterr().err
    # the gold reader says the same of the same line
    with pytest.raises(DataError, match=r"pred\.jsonl:2: start/end must be integers"):
        read_spans_jsonl(pred)


def test_check_offsets_on_tables():
    assert check_offsets(3, 5, "t") == (3, 5)
    assert check_offsets(3.0, 5.0, "t", 9, integral_floats=True) == (3, 5)  # a column that held a NaN
    with pytest.raises(DataError, match=r"t row 1: start/end must be integers \(start is float 3\.5\)"):
        check_offsets(3.5, 5, "t row 1", 9, integral_floats=True)
    with pytest.raises(DataError, match="outside note 'n' of length 4"):
        check_offsets(3, 5, "t", 4, note_id="n")


def test_plausibility_tables_reject_fractional_offsets():
    from rationale_kit.metrics import plausibility as P

    docs = pd.DataFrame({"note_id": ["n1"], "text": [TEXT]})
    gold = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "start": [12], "end": [17]})
    pred = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "start": [12.9], "end": [17.7]})
    with pytest.raises(DataError, match=r"pred row 0: start/end must be integers \(start is float 12\.9\)"):
        P.span_plausibility(gold, pred, docs)
    with pytest.raises(DataError, match=r"pred row 0: start/end must be integers \(start is bool True\)"):
        P.span_plausibility(gold, pred.astype(object).assign(start=[True]), docs)
    ok = pred.assign(start=[12.0], end=[17.0])
    assert P.span_plausibility(gold, ok, docs)["span_exact"]["tp"] == 1


# ---- quote: the user's cache, output checked before paying, flags, real-server errors, Ctrl-C ----

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI, OAReply  # noqa: E402

from rationale_kit.__main__ import main  # noqa: E402

NOTES = {"a": "Type 2 diabetes mellitus on metformin.", "b": "Essential hypertension, poorly controlled.",
         "c": "Asthma, mild intermittent."}


@pytest.fixture
def qfiles(tmp_path, monkeypatch):
    import logging

    # a root handler left by an earlier test (run_series' basicConfig on a captured, now closed
    # stdout) would print "--- Logging error ---" into the stderr these tests read
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setenv("RK_LLM_CACHE_DIR", str(tmp_path / "user_cache"))
    docs = write_jsonl(tmp_path / "notes.jsonl", [{"note_id": k, "text": v} for k, v in NOTES.items()])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"note_id": "a", "code": "E11.9"}, {"note_id": "b", "code": "I10"},
                                                   {"note_id": "c", "code": "J45.20"}])
    return tmp_path, ["quote", "--docs", docs, "--pairs", pairs, "--backend", "openai", "--model", "m", "--public-data"]


def test_quote_checks_out_before_any_call_and_reruns_from_the_user_cache(qfiles, capsys):
    tmp, args = qfiles
    with FakeOpenAI() as srv:
        url = ["--base-url", srv.base_url]
        (tmp / "adir").mkdir()
        assert main(args + url + ["--out", str(tmp / "adir")]) == 2  # a folder: refused before paying
        assert "is a folder" in capsys.readouterr().err and srv.hits == 0
        blocker = tmp / "afile"
        blocker.write_text("x")
        assert main(args + url + ["--out", str(tmp / "o.jsonl"), "--cache-dir", str(blocker)]) == 2
        assert "--cache-dir" in capsys.readouterr().err and srv.hits == 0
        assert main(args + url + ["--out", str(tmp / "o1.jsonl")]) == 0 and srv.hits == 3
        assert main(args + url + ["--out", str(tmp / "o2.jsonl")]) == 0 and srv.hits == 3  # another --out: no new call
        assert "0 new calls, 3 cached" in capsys.readouterr().err
        assert (tmp / "o1.jsonl").read_text() == (tmp / "o2.jsonl").read_text()


def test_quote_flags_reach_the_request(qfiles, capsys):
    tmp, args = qfiles
    with FakeOpenAI() as srv:
        rc = main(args + ["--base-url", srv.base_url, "--out", str(tmp / "o.jsonl"), "--concurrency", "1",
                          "--timeout", "30", "--max-output-tokens", "512", "--response-format", "json_object",
                          "--output-token-param", "max_completion_tokens", "--local-endpoint"])
        assert rc == 0, capsys.readouterr().err
        body = srv.requests[0]["body"]
    assert body["max_completion_tokens"] == 512 and "max_tokens" not in body
    assert body["response_format"] == {"type": "json_object"}
    assert main(args + ["--out", str(tmp / "o.jsonl"), "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err


def test_quote_on_a_server_without_json_schema_says_what_to_change(qfiles, capsys):
    """llama-cpp-python 0.3 answers HTTP 500 to response_format json_schema: one clear error naming
    the setting, no retries; the rerun with the setting asks again and succeeds."""
    tmp, args = qfiles
    msg = ("1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' or "
           "'json_object' [type=literal_error, input_value='json_schema', input_type=str]")

    def respond(body):
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return OAReply.error(500, msg)
        from fake_openai import quote_first_words
        return quote_first_words(body)

    with FakeOpenAI(responder=respond) as srv:
        rc = main(args + ["--base-url", srv.base_url, "--out", str(tmp / "o.jsonl"), "--concurrency", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and srv.hits == 1 and not (tmp / "o.jsonl").exists()
        assert "response_format: json_object" in err and "--response-format json_object" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        rc = main(args + ["--base-url", srv.base_url, "--out", str(tmp / "o.jsonl"), "--response-format", "json_object"])
        assert rc == 0 and srv.hits == 4


def test_quote_ctrl_c_exits_130_and_keeps_the_answers(qfiles, capsys, monkeypatch):
    tmp, args = qfiles
    from rationale_kit.rationales import llm

    real = llm.OpenAIBackend.agenerate

    async def interrupted(self, prompt):
        if "Asthma" in prompt.user:
            raise KeyboardInterrupt
        return await real(self, prompt)

    with FakeOpenAI() as srv:
        url = ["--base-url", srv.base_url, "--out", str(tmp / "o.jsonl"), "--concurrency", "1"]
        monkeypatch.setattr(llm.OpenAIBackend, "agenerate", interrupted)
        assert main(args + url) == 130
        assert "interrupted" in capsys.readouterr().err and srv.hits == 2 and not (tmp / "o.jsonl").exists()
        monkeypatch.setattr(llm.OpenAIBackend, "agenerate", real)
        assert main(args + url) == 0 and srv.hits == 3  # only the note that was not answered is asked


# ---- exit status 2 with one line, for every command -------------------------------------------------

@pytest.mark.parametrize("command", ["run", "report", "train", "export-data", "quote"])
@pytest.mark.parametrize("problem", ["not_utf8", "folder", "bad_overrides", "overrides_not_object"])
def test_bad_profile_or_overrides_exit_2_with_one_line(tmp_path, capsys, command, problem):
    prof = tmp_path / "p.yaml"
    prof.write_text("common: {seed: 3}\n")
    extra: list[str] = []
    if problem == "not_utf8":
        prof.write_bytes(b"common: {seed: 3}\n# caf\xe9\n")
    elif problem == "folder":
        prof = tmp_path / "adir.yaml"
        prof.mkdir()
    elif problem == "bad_overrides":
        extra = ["--overrides", "{not json"]
    else:
        extra = ["--overrides", "[1, 2]"]
    if command == "quote":
        if extra:
            pytest.skip("quote takes no --overrides")
        docs = write_jsonl(tmp_path / "d.jsonl", [{"note_id": "a", "text": "x y"}])
        argv = ["quote", "--docs", docs, "--pairs", docs, "--out", str(tmp_path / "o.jsonl")]
    else:
        argv = [command] + (["--model", "caml"] if command == "train" else []) + \
            (["--out", str(tmp_path / "out")] if command == "export-data" else [])
    rc = main(argv + ["--profile", str(prof)] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    assert ("--overrides" in err) if extra else (str(prof) in err)


# ---- the run lock ------------------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENDER = """
import json, sys, time
from rationale_kit.core.lock import ProfileLock, RunLocked
path = sys.argv[1]
print("ready", flush=True)
go = float(sys.stdin.readline())  # the same instant for every contender, sent once all are ready
time.sleep(max(0.0, go - time.time()))
try:
    with ProfileLock(path, "p", kernel_wait_s=0):
        t0 = time.time(); time.sleep(1.0); print(json.dumps(["held", t0, time.time()]))
except RunLocked as exc:
    print(json.dumps(["refused", str(exc)]))
"""


def _race(lock: Path, n: int = 8) -> list:
    """``n`` contenders started; once every one has said it is ready (imports done), all are given
    the same start instant, a little ahead (no fixed wait that slow start-ups could overrun)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * n
    go = time.time() + 0.3
    for p in procs:  # every contender gets the instant before any is waited for
        p.stdin.write(f"{go}\n")
        p.stdin.close()
    outs = [p.stdout.read() for p in procs]
    assert all(p.wait(timeout=60) == 0 for p in procs), outs
    return [json.loads(out) for out in outs]


@pytest.mark.parametrize("left_behind", ["empty", "live_unrelated_pid"])
def test_lock_race_has_exactly_one_holder(tmp_path, left_behind):
    """8 processes start at the same instant, over a lock file left as the case says: never two
    holders at once, and someone holds it (before: up to 3 holders at once, none in some rounds,
    and a stale file naming a live unrelated pid refused every run)."""
    lock = tmp_path / ".lock"
    if left_behind == "empty":
        lock.write_text("")
    elif left_behind == "dead_pid":
        lock.write_text(json.dumps({"pid": 2 ** 22 + 7, "started": "earlier"}))
    elif left_behind == "live_unrelated_pid":
        lock.write_text(json.dumps({"pid": os.getpid(), "started": "earlier"}))
    results = _race(lock)
    held = sorted(r[1:] for r in results if r[0] == "held")
    assert held, results
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(held, held[1:])), held  # no overlap
    assert all("another run of profile 'p' is in progress" in r[1] for r in results if r[0] == "refused")
    assert not lock.exists()  # released and removed


def test_lock_names_holder_with_start_time_and_orphan_kernels_are_waited_for(tmp_path, monkeypatch):
    from rationale_kit.core.lock import KERNEL_LOCK_ENV, ProfileLock, RunLocked, process_start_time

    lock = tmp_path / ".lock"
    with ProfileLock(lock, "p", "train"):
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "train"
        assert info["pid_start"] == process_start_time(os.getpid()) is not None
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()}, train"):
            ProfileLock(lock, "p").__enter__()
    # a kernel of an earlier run still alive (its runner was killed): the next holder waits for it
    kernel = subprocess.Popen([sys.executable, "-c", "import time; from rationale_kit.core.lock import hold_kernel_lock; "
                               "hold_kernel_lock(); print('up', flush=True); time.sleep(1.0)"],
                              env={**os.environ, "PYTHONPATH": str(ROOT), KERNEL_LOCK_ENV: str(tmp_path / ".kernel.lock")},
                              stdout=subprocess.PIPE, text=True)
    assert kernel.stdout.readline().strip() == "up"
    with pytest.raises(RunLocked, match="notebook kernel of an earlier run"):
        ProfileLock(lock, "p", kernel_wait_s=0.1).__enter__()
    t0 = time.monotonic()
    with ProfileLock(lock, "p", kernel_wait_s=30):
        waited = time.monotonic() - t0
        assert kernel.poll() is not None  # the kernel was gone before the lock was given
    kernel.wait()
    assert waited > 0.3


def test_train_refuses_while_a_run_holds_the_profile(tmp_path, capsys, monkeypatch):
    """`train` takes the same lock as `run` (before: it wrote artifacts/<profile>/02_train while a run
    held runs/<profile>/.lock)."""
    from rationale_kit.core import runtime
    from rationale_kit.core.lock import ProfileLock
    from rationale_kit import data

    monkeypatch.setattr(runtime, "ROOT", tmp_path)
    loaded = []
    monkeypatch.setattr(data, "load_dataset", lambda prof: loaded.append(prof) or 1 / 0)
    with ProfileLock(tmp_path / "runs" / "smoke" / ".lock", "smoke", "run"):
        rc = main(["train", "--profile", "smoke", "--model", "caml", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "another run of profile 'smoke' is in progress" in err and "run, started" in err
    assert not loaded and not (tmp_path / "o").exists()


# ---- RK_CODIESP_DIR ------------------------------------------------------------------------------

def test_rk_codiesp_dir_is_honoured_by_the_codiesp_profile(tmp_path, monkeypatch):
    from rationale_kit.core.config import load_profile
    from rationale_kit.data.codiesp import resolve_codiesp_dir

    fake = tmp_path / "mycopy" / "codiesp_v4"
    (fake / "train").mkdir(parents=True)
    (fake / "train" / "trainD.tsv").write_text("")
    monkeypatch.setenv("RK_CODIESP_DIR", str(tmp_path / "mycopy"))
    prof = load_profile("codiesp")
    assert resolve_codiesp_dir(prof.data.codiesp_dir) == fake  # before: the profile's path won
    monkeypatch.setenv("RK_CODIESP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere, from \$RK_CODIESP_DIR"):
        resolve_codiesp_dir(prof.data.codiesp_dir)
    with pytest.raises(DataError, match=r"from data.codiesp_dir .*RK_CODIESP_DIR=.*nowhere is not used"):
        resolve_codiesp_dir(str(tmp_path / "elsewhere"))


# ---- loaders ----------------------------------------------------------------------------------------

def test_mimic_header_only_tables_are_errors(tmp_path):
    from test_data import _notes, _diagnoses, _procedures, write_mimic
    from rationale_kit import data

    root = write_mimic(tmp_path / "a", notes=_notes().iloc[:0])
    with pytest.raises(DataError, match=r"discharge\.csv\.gz: no data rows \(only a header\)"):
        data.load_mimic(root, min_code_count=1)
    root = write_mimic(tmp_path / "b", diagnoses=_diagnoses().iloc[:0])
    with pytest.raises(DataError, match=r"diagnoses_icd\.csv\.gz: no data rows \(only a header\)"):
        data.load_mimic(root, min_code_count=1)
    ds = data.load_mimic(write_mimic(tmp_path / "c", procedures=_procedures().iloc[:0]), min_code_count=1)
    assert len(ds.docs) and "procedures_icd.csv.gz has no data rows (only a header): no procedure codes" in ds.report["warnings"]


def test_mdace_span_on_a_whitespace_only_note_is_refused_like_the_spans_loader(tmp_path):
    from rationale_kit.data.mdace import load_mdace

    docs = pd.DataFrame({"note_id": ["101"], "text": ["   \n  "], "codes": [["I10"]], "split": ["test"],
                         "annotated": [False], "fewshot": [False], "credentialed": [True]})
    d = tmp_path / "mdace" / "Inpatient" / "ICD-10" / "1.0"
    d.mkdir(parents=True)
    (d / "101.json").write_text(json.dumps({"hadm_id": 101, "notes": [
        {"note_id": 9, "category": "Discharge summary", "description": "Report",
         "annotations": [{"begin": 1, "end": 3, "code": "I10", "code_system": "ICD-10-CM", "type": "Diagnosis"}]}]}))
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations\[0\]: admission '101' is an empty note"):
        load_mdace(tmp_path / "mdace", docs)


def test_damaged_saved_dataset_and_model_name_the_file(tmp_path):
    from rationale_kit import data
    from rationale_kit.models import io

    folder = tmp_path / "01_data"
    folder.mkdir()
    for name in ("docs.parquet", "spans.parquet", "codes.parquet"):
        (folder / name).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"01_data/docs\.parquet: unreadable"):
        data.load_saved(folder)
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text('{"format": ')
    with pytest.raises(DataError, match=r"model/config\.json: unreadable model configuration"):
        io.load(m)
    cfg = {"format": io.FORMAT_VERSION, "name": "caml", "labels": ["I10"], "params": {}, "max_words": 10,
           "tokenizer": {"max_words": 10}, "threshold": "abc"}
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"config\.json: threshold must be a number in \[0, 1\] or null, got 'abc'"):
        io.load(m)
    (m / "config.json").write_text(json.dumps({**cfg, "threshold": 0.4}))
    (m / "vocab.json").write_text('{"a": 1')
    with pytest.raises(DataError, match=r"model/vocab\.json: unreadable"):
        io.load(m)


def test_export_data_writes_whole_files_or_nothing(tmp_path, monkeypatch):
    """A failure half-way leaves the previous file (or none), never a partial one."""
    from rationale_kit.core import records
    from rationale_kit.core.config import load_profile
    from rationale_kit import data

    ds = data.load_dataset(load_profile("smoke"))
    out = tmp_path / "exp"
    data.export_dataset(ds, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real_dumps = records.json.dumps

    def dying(obj, **kw):  # the process dies after a few spans are written
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_dumps(obj, **kw)

    monkeypatch.setattr(records.json, "dumps", dying)
    with pytest.raises(KeyboardInterrupt):
        data.export_dataset(ds, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial file, no temporary left


# ---- alignment of short verbatim quotes -----------------------------------------------------------

def test_short_verbatim_quotes_like_list_markers_align():
    """'1.' and '2.' are in the note at the start of lines (list markers, which the alignment form
    blanks): both align, exactly where they are (before: 'no_overlap')."""
    from rationale_kit.rationales.alignment import align_quote

    text = "Diagnoses:\n1. Hypertension\n2. Diabetes\n10. Asthma"
    for quote in ("1.", "2.", "10."):
        rows = align_quote(text, quote)
        assert [(r.start, r.end, r.method) for r in rows] == [(text.index(f"\n{quote}") + 1,
                                                                text.index(f"\n{quote}") + 1 + len(quote), "exact")]
    # word boundaries hold: '1.' is not found inside '11.' or '21.'
    assert not align_quote("Items 11. and 21. only", "1.")[0].aligned


def test_a_released_kernel_lock_lets_the_next_run_in(tmp_path, monkeypatch):
    """A notebook executed inside a longer-lived process (an in-process engine) gives its kernel
    lock back when it ends: an exclusive lock on the file is then free again."""
    import fcntl
    import os

    from rationale_kit.core import lock

    path = tmp_path / ".kernel.lock"
    monkeypatch.setenv(lock.KERNEL_LOCK_ENV, str(path))
    lock.hold_kernel_lock()
    probe = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held (shared) by the "kernel"
        lock.release_kernel_lock()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    finally:
        os.close(probe)
        lock.release_kernel_lock()
