"""The embedded synthetic corpus: determinism, span integrity, lexicon validity, realism, learnability."""
from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from rationale_kit.data import embedded as C
from rationale_kit.core.config import EmbeddedCorpus
from rationale_kit.core.records import SPAN_COLUMNS, validate_spans
from rationale_kit.core.text import WORD_RE

SMALL = EmbeddedCorpus(n_train=40, n_val=10, n_test=20, n_fewshot_pool=8, n_codes=12, min_words=150,
                       max_words=900)


@pytest.fixture(scope="module")
def lex():
    return C.load_corpus_lexicon()


@pytest.fixture(scope="module")
def small():
    return C.generate_corpus(SMALL, 7)


@pytest.fixture(scope="module")
def clean():
    """No typos: every span can be checked against the lexicon's own text."""
    cfg = dataclasses.replace(SMALL, n_train=80, n_codes=30, min_words=200, max_words=3200, typo_rate=0.0,
                              distractor_rate=1.5)
    return C.generate_corpus(cfg, 3)


@pytest.fixture(scope="module")
def lengths_sample():
    cfg = EmbeddedCorpus(n_train=200, n_val=0, n_test=0, n_fewshot_pool=0, n_codes=20, min_words=200,
                         max_words=3200)
    return C.generate_corpus(cfg, 11)


def _words(text: str) -> int:
    return len(WORD_RE.findall(text))


def _regex(nodes) -> str:
    """A regular expression matching every text a parsed template can produce."""
    out = []
    for node in nodes:
        if node[0] == "lit":
            out.append(re.escape(node[1]))
        elif node[0] == "choice":
            out.append("(?:" + "|".join(_regex(alt) for alt in node[1]) + ")")
        elif node[0] == "num":
            out.append(r"-?\d+(?:\.\d+)?")
        else:
            out.append(r"\w+")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# determinism and API
# --------------------------------------------------------------------------------------------
def test_same_seed_same_corpus(small):
    again = C.generate_corpus(SMALL, 7)
    for name in ("docs", "spans", "codes", "distractors", "pairs"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(again, name))
    assert small.lexicon_version == again.lexicon_version
    other = C.generate_corpus(SMALL, 8)
    assert list(other.docs["text"]) != list(small.docs["text"])
    assert not small.spans.equals(other.spans)


def test_frames_and_columns(small, lex):
    assert list(small.docs.columns) == ["note_id", "text", "codes", "split", "annotated", "fewshot"]
    assert list(small.spans.columns) == SPAN_COLUMNS
    assert list(small.codes.columns) == ["code", "description", "frequency"]
    assert small.docs["note_id"].is_unique
    assert all(re.fullmatch(r"syn-\d{6}", n) for n in small.docs["note_id"])
    assert (small.spans["source"] == "human").all()
    assert set(small.spans["granularity"]) == {"mention", "evidence", "sentence"}
    assert all(cs == sorted(cs) and len(cs) == len(set(cs)) and cs for cs in small.docs["codes"])
    assert list(small.codes["code"]) == [e["code"] for e in lex["codes"][:SMALL.n_codes]]
    train = small.docs[small.docs["split"] == "train"]
    for code, freq in zip(small.codes["code"], small.codes["frequency"]):
        assert freq == sum(code in cs for cs in train["codes"])
    assert small.lexicon_version.startswith(lex["version"] + "+")
    summary = C.corpus_summary(small)
    assert list(summary.index) == ["train", "val", "test", "all"]
    assert summary.loc["all", "documents"] == len(small.docs)
    assert summary.loc["all", "spans mention"] == (small.spans["granularity"] == "mention").sum()


def test_splits_and_flags(small):
    docs = small.docs
    assert docs["split"].value_counts().to_dict() == {"train": 40, "val": 10, "test": 20}
    assert docs.loc[docs["split"] == "test", "annotated"].all()
    assert not docs.loc[docs["split"] != "test", "annotated"].any()
    few = docs[docs["fewshot"]]
    assert len(few) == SMALL.n_fewshot_pool
    assert (few["split"] == "train").all() and not few["annotated"].any()
    # every document has spans (the generator knows them), consumers decide which to use
    assert set(small.spans["note_id"]) <= set(docs["note_id"])
    assert small.spans["note_id"].nunique() >= 0.9 * len(docs)


def test_fewshot_pool_covers_codes(lengths_sample):
    cfg = dataclasses.replace(SMALL, n_train=120, n_val=0, n_test=10, n_fewshot_pool=30)
    c = C.generate_corpus(cfg, 4)
    few = set(c.docs.loc[c.docs["fewshot"], "note_id"])
    assert len(few) == 30 and not (few & set(c.docs.loc[c.docs["split"] == "test", "note_id"]))
    ev = c.pairs[c.pairs["evidence"] != "none"]
    train = set(c.docs.loc[c.docs["split"] == "train", "note_id"])
    for code in c.codes["code"]:
        available = ev[(ev["code"] == code) & ev["note_id"].isin(train)]["note_id"].nunique()
        in_pool = ev[(ev["code"] == code) & ev["note_id"].isin(few)]["note_id"].nunique()
        assert in_pool >= min(C.FEWSHOT_PER_CODE, available), code


def test_bad_config_is_an_error():
    with pytest.raises(C.DataError, match="n_fewshot_pool"):
        C.generate_corpus(dataclasses.replace(SMALL, n_fewshot_pool=100), 1)
    with pytest.raises(C.DataError, match="n_codes"):
        C.generate_corpus(dataclasses.replace(SMALL, n_codes=10_000), 1)


# --------------------------------------------------------------------------------------------
# spans
# --------------------------------------------------------------------------------------------
def test_spans_inside_notes_and_on_their_codes(small):
    validate_spans(small.spans, small.docs)
    texts = dict(zip(small.docs["note_id"], small.docs["text"]))
    codes = dict(zip(small.docs["note_id"], small.docs["codes"]))
    for r in small.spans.itertuples():
        piece = texts[r.note_id][r.start:r.end]
        assert piece and piece == piece.strip() and len(piece) == r.end - r.start
        assert r.code in codes[r.note_id]
    assert not small.spans.duplicated(["note_id", "code", "start", "end", "granularity"]).any()


def test_span_text_is_what_the_lexicon_wrote(clean, lex):
    by = lex["by_code"]
    texts = dict(zip(clean.docs["note_id"], clean.docs["text"]))
    fact_re = {c: re.compile("|".join("(?:" + _regex(C.parse_template(f)) + ")"
                                      for facts in by[c]["evidence"].values() for f in facts), re.I)
               for c in by}
    spans = clean.spans
    for r in spans.itertuples():
        piece = texts[r.note_id][r.start:r.end]
        if r.granularity == "mention":
            assert piece.lower() in {m.lower() for m in by[r.code]["mentions"]}, (r.code, piece)
        elif r.granularity == "evidence":
            assert fact_re[r.code].fullmatch(piece), (r.code, piece)
    # a sentence span holds a mention or an evidence span of its code
    inner = spans[spans["granularity"] != "sentence"]
    groups = {k: list(zip(g["start"], g["end"])) for k, g in inner.groupby(["note_id", "code"])}
    for r in spans[spans["granularity"] == "sentence"].itertuples():
        assert any(r.start <= a and b <= r.end for a, b in groups[(r.note_id, r.code)])


def test_evidence_modes(clean):
    spans = clean.spans
    kinds = {k: set(g["granularity"]) for k, g in spans.groupby(["note_id", "code"])}
    modes = clean.pairs.set_index(["note_id", "code"])["evidence"]
    assert set(modes) == {"explicit", "indirect", "none"}
    for key, mode in modes.items():
        got = kinds.get(key, set())
        if mode == "none":
            assert not got, key  # no-evidence codes have no spans
        elif mode == "indirect":
            assert "mention" not in got and "evidence" in got, key
        else:
            assert "mention" in got, key
    pairs = {(n, c) for n, cs in zip(clean.docs["note_id"], clean.docs["codes"]) for c in cs}
    assert set(modes.index) == pairs


def test_evidence_repeated_across_sections_and_past_512_words(clean):
    texts = dict(zip(clean.docs["note_id"], clean.docs["text"]))
    mentions = clean.spans[clean.spans["granularity"] == "mention"]
    per_pair = mentions.groupby(["note_id", "code"]).size()
    assert (per_pair >= 2).mean() > 0.5  # most explicit codes are named more than once
    late = 0
    for r in clean.spans.itertuples():
        if _words(texts[r.note_id][:r.start]) > 512:
            late += 1
    assert late > 0.2 * len(clean.spans)


def test_distractors_are_not_evidence(clean, lex):
    dis = clean.distractors
    assert set(dis["kind"]) >= {"negated", "family"}
    codes = dict(zip(clean.docs["note_id"], clean.docs["codes"]))
    texts = dict(zip(clean.docs["note_id"], clean.docs["text"]))
    gold = {k: list(zip(g["start"], g["end"])) for k, g in clean.spans.groupby(["note_id", "code"])}
    for r in dis.itertuples():
        assert r.code not in codes[r.note_id]  # the distractor's code is not assigned
        assert not any(a < r.end and r.start < b for a, b in gold.get((r.note_id, r.code), []))
        e = lex["by_code"][r.code]
        forms = {f.lower() for f in (e["distractor_forms"] or e["mentions"])}
        assert texts[r.note_id][r.start:r.end].lower() in forms
    negated = dis[dis["kind"] == "negated"]
    assert len(negated) > 0
    for r in negated.itertuples():
        before = texts[r.note_id][max(0, r.start - 60):r.start]
        assert re.search(r"(?i)\b(no|not|denies|negative|without)\b", before), before


def test_no_unrecorded_mentions_of_unassigned_codes(clean, lex):
    """A diagnosis named in a note is either a code of the note or a recorded distractor."""
    used = lex["codes"][:30]
    others = {e["code"]: " ".join(list(e["mentions"]) + list(e["contexts"])
                                  + [f for v in e["evidence"].values() for f in v]).lower() for e in lex["codes"]}
    patterns = {}
    for e in used:
        forms = [m for m in e["mentions"] if not any(m.lower() in t for c, t in others.items() if c != e["code"])]
        if forms:
            patterns[e["code"]] = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, forms)) + r")(?!\w)", re.I)
    dis = {k: list(zip(g["start"], g["end"])) for k, g in clean.distractors.groupby("note_id")}
    for nid, text, codes in zip(clean.docs["note_id"], clean.docs["text"], clean.docs["codes"]):
        for code, pat in patterns.items():
            if code in codes:
                continue
            for m in pat.finditer(text):
                assert any(a < m.end() and m.start() < b for a, b in dis.get(nid, [])), (nid, code, m.group())


# --------------------------------------------------------------------------------------------
# codes and lexicon
# --------------------------------------------------------------------------------------------
def test_lexicon_codes_are_billable_and_rich(lex):
    import simple_icd_10_cm as icd

    codes = [e["code"] for e in lex["codes"]]
    assert len(codes) >= 60 and len(set(codes)) == len(codes)
    for e in lex["codes"]:
        assert icd.is_valid_item(e["code"]) and icd.is_leaf(e["code"]), e["code"]
        assert len(e["mentions"]) >= 3
        assert sum(len(v) for v in e["evidence"].values()) >= 2
        assert len(e["contexts"]) >= 2
    for must in ["I10", "E11.9", "E11.22", "N18.30", "N18.4", "I50.22", "I50.23", "I48.91", "I48.0", "J44.9",
                 "J44.1", "N17.9", "N39.0", "E78.5", "F32.A", "J18.9", "A41.9", "I25.10", "F17.210"]:
        assert must in codes, must


def test_sibling_pairs(lex, small):
    by = lex["by_code"]

    def exclusive(a, b):
        ea, eb = by[a], by[b]
        return (ea["group"] is not None and ea["group"] == eb["group"]) or b in ea["excludes"] or a in eb["excludes"]

    for a, b in [("I50.22", "I50.23"), ("I50.32", "I50.33"), ("E11.9", "E11.22"), ("N18.30", "N18.4"),
                 ("I48.91", "I48.0"), ("J44.9", "J44.1"), ("F17.210", "Z87.891")]:
        assert a[:3] == b[:3] or a[0] == "F"
        assert exclusive(a, b), (a, b)
    first12 = [e["code"] for e in lex["codes"][:12]]
    assert {"I50.22", "I50.23"} <= set(first12) and {"E11.9", "E11.22"} <= set(first12)
    for cs in small.docs["codes"]:
        assert not ({"I50.22", "I50.23"} <= set(cs)) and not ({"E11.9", "E11.22"} <= set(cs))


def test_code_structure(lengths_sample):
    docs = lengths_sample.docs
    n = docs["codes"].map(len)
    assert 3.5 <= n.mean() <= 6.5  # codes_per_note_mean = 5
    freq = lengths_sample.codes.set_index("code")["frequency"]
    assert freq.max() >= 5 * max(freq.min(), 1)  # long-tailed
    has = lambda c: docs["codes"].map(lambda cs: c in cs)
    # co-occurrence: atrial fibrillation with anticoagulation, diabetes with hypertension
    assert (has("Z79.01") & has("I48.91")).sum() / max(has("I48.91").sum(), 1) > 1.5 * has("Z79.01").mean()
    assert (has("I10") & has("E11.9")).sum() / max(has("E11.9").sum(), 1) > has("I10").mean()


def test_each_code_mention_forms_appear(lengths_sample, lex):
    mentions = lengths_sample.spans[lengths_sample.spans["granularity"] == "mention"]
    texts = dict(zip(lengths_sample.docs["note_id"], lengths_sample.docs["text"]))
    seen: dict[str, set] = {}
    for r in mentions.itertuples():
        seen.setdefault(r.code, set()).add(texts[r.note_id][r.start:r.end].lower())
    for e in lex["codes"][:12]:
        forms = {m.lower() for m in e["mentions"]}
        assert forms <= seen.get(e["code"], set()), (e["code"], forms - seen.get(e["code"], set()))


def test_lengths(lengths_sample, small):
    words = lengths_sample.docs["text"].map(_words)
    assert words.min() >= 200 and words.max() <= 3200
    assert (words > 3000).sum() >= 1
    assert ((words >= 400) & (words <= 1500)).mean() > 0.6
    assert words.median() < 1500
    w_small = small.docs["text"].map(_words)
    assert w_small.min() >= SMALL.min_words and w_small.max() <= SMALL.max_words
    # filler prose is varied: few sentences repeat within a long note
    longest = lengths_sample.docs["text"].iloc[int(np.argmax(words.values))]
    sents = [s for s in re.split(r"(?<=[.?!])\s+", longest) if len(s.split()) >= 6]
    assert len(set(sents)) / len(sents) > 0.8


def test_tiny_notes_fit_max_words():
    cfg = EmbeddedCorpus(n_train=24, n_val=6, n_test=6, n_fewshot_pool=4, n_codes=8, min_words=60, max_words=200)
    c = C.generate_corpus(cfg, 2)
    words = c.docs["text"].map(_words)
    assert words.max() <= 200 and words.min() >= 60
    assert len(c.spans) > 0


def test_default_size_generation_speed():
    cfg = EmbeddedCorpus(n_train=300, n_val=50, n_test=50, n_fewshot_pool=20)
    t0 = time.perf_counter()
    C.generate_corpus(cfg, 13)
    assert time.perf_counter() - t0 < 20  # 1,600 default notes take about 4x this


# --------------------------------------------------------------------------------------------
# lexicon validation errors
# --------------------------------------------------------------------------------------------
def _write_lexicon(tmp_path, mutate):
    with open(C.LEXICON_DIR / "codes.yaml", encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    entries = [dict(e) for e in raw["codes"][:5]]
    entries = [{k: v for k, v in e.items() if k not in ("related", "excludes", "requires")} for e in entries]
    mutate(entries)
    path = tmp_path / "lexicon.yaml"
    path.write_text(yaml.safe_dump({"version": "t", "codes": entries}), encoding="utf-8")
    return path


@pytest.mark.parametrize("mutate, pattern", [
    (lambda es: es[1].update(code="I50.2"), r"code I50\.2.*not billable"),
    (lambda es: es[1].update(code="X99.999"), r"code X99\.999.*not a valid ICD-10-CM"),
    (lambda es: es[2].update(mentions=["a", "b"]), r"code I50\.23: key 'mentions': need at least 3"),
    (lambda es: es[0].update(colour="blue"), r"code I10: unknown key 'colour'"),
    (lambda es: es[0].pop("contexts"), r"code I10: missing key 'contexts'"),
    (lambda es: es[0].update(contexts=["{Mention} on {evidence:lab}.", "{mention}"]),
     r"code I10: key 'contexts'.*evidence:lab"),
    (lambda es: es[0].update(contexts=["Seen {nobody}.", "{mention}"]), r"code I10: key 'contexts'.*unknown slot"),
    (lambda es: es[0].update(evidence={"med": ["only one {5|10} mg"]}), r"code I10: key 'evidence'.*at least 2"),
    (lambda es: es[0].update(evidence={"drug": ["a", "b"]}), r"code I10: key 'evidence'.*unknown kind 'drug'"),
    (lambda es: es[0].update(where=["nowhere"]), r"code I10: key 'where'.*unknown placement"),
    (lambda es: es[0].update(related={"Q99.9": 0.5}), r"code I10: key 'related'.*Q99\.9"),
    (lambda es: es[3].update(mentions=["AKI", "HTN", "acute kidney injury"]), r"code N17\.9.*'HTN'.*I10"),
    (lambda es: es[0].update(weight=-1), r"code I10: key 'weight'"),
    (lambda es: es[0].update(contexts=["{mention {x}.", "{mention}"]), r"code I10: key 'contexts'.*unmatched"),
])
def test_lexicon_errors_name_code_and_key(tmp_path, mutate, pattern):
    path = _write_lexicon(tmp_path, mutate)
    with pytest.raises(C.LexiconError, match=pattern):
        C.load_corpus_lexicon(path)


def test_custom_lexicon_file_generates(tmp_path):
    path = _write_lexicon(tmp_path, lambda es: None)
    lex = C.load_corpus_lexicon(path)
    assert [e["code"] for e in lex["codes"]] == ["I10", "E11.9", "I50.23", "N17.9", "E78.5"]
    cfg = dataclasses.replace(SMALL, n_train=10, n_val=2, n_test=2, n_fewshot_pool=2, n_codes=5)
    c = C.generate_corpus(cfg, 1, lexicon=path)
    assert set(c.spans["code"]) <= set(lex["by_code"])
    assert c.lexicon_version.startswith("t+")


def test_bad_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("codes: [unclosed\n", encoding="utf-8")
    with pytest.raises(C.LexiconError, match="broken.yaml"):
        C.load_corpus_lexicon(path)


# --------------------------------------------------------------------------------------------
# learnability: learnable, but not trivially separable
# --------------------------------------------------------------------------------------------
def test_bag_of_words_learnability():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    cfg = EmbeddedCorpus(n_train=300, n_val=0, n_test=150, n_fewshot_pool=0, n_codes=20, min_words=200,
                         max_words=1500)
    c = C.generate_corpus(cfg, 5)
    tr, te = c.docs[c.docs["split"] == "train"], c.docs[c.docs["split"] == "test"]
    labels = list(c.codes["code"])
    mlb = MultiLabelBinarizer(classes=labels)
    ytr, yte = mlb.fit_transform(tr["codes"]), mlb.transform(te["codes"])
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xtr, xte = vec.fit_transform(tr["text"]), vec.transform(te["text"])
    keep = ytr.sum(0) > 0
    clf = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000)).fit(xtr, ytr[:, keep])
    proba = np.zeros(yte.shape)
    proba[:, keep] = clf.predict_proba(xte)
    f1 = max(f1_score(yte, proba >= t, average="micro") for t in (0.2, 0.3, 0.4, 0.5))
    order = np.argsort(-ytr.mean(0))
    baseline = 0.0
    for k in range(1, 11):  # the best "always predict the k most frequent codes"
        pred = np.zeros_like(yte)
        pred[:, order[:k]] = 1
        baseline = max(baseline, f1_score(yte, pred, average="micro"))
    assert f1 > baseline + 0.2, (f1, baseline)
    assert f1 < 0.99, f1
