"""CodiEsp v4 (CLEF eHealth 2020, CC BY 4.0): Spanish clinical cases with ICD-10 codes and evidence
spans, or their English machine translation with sentence-level projected spans. See
docs/method/data.md."""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal, Optional

from rationale_kit.core import icd
from rationale_kit.core.records import DataError
from rationale_kit.data.dataset import SPLITS, Dataset, codes_table, docs_frame, spans_frame, split_counts
from rationale_kit.data.files import collapse_ws, read_text_file, read_tsv, resolve_path
from rationale_kit.data.splits import mark_fewshot


#: Default CodiEsp location, relative to the repository root (``data.codiesp_dir``).
DEFAULT_CODIESP_DIR = "../shared/data/codiesp_v4"
CODIESP_SPLITS = {"train": "train", "dev": "val", "test": "test"}
#: Sentence boundary used for the English projection: whitespace after ``.``, ``!`` or ``?`` when
#: the next character opens a sentence (upper-case letter, digit, ``¿ ¡ ( " «``); line breaks are
#: boundaries too. Chosen because it reproduces the sentence count of the English machine
#: translation (one sentence per line) for most CodiEsp documents.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[ \t]+(?=[A-ZÁÉÍÓÚÑÜ¿¡(\"«0-9])")
_LETTER = re.compile(r"[^\W\d_]")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentences of ``text`` as half-open offsets, stripped of surrounding whitespace.

    A boundary is a line break, or whitespace that follows ``.``, ``!`` or ``?`` and precedes an
    upper-case letter, a digit or ``¿ ¡ ( " «`` (:data:`SENTENCE_BREAK`). Empty pieces are dropped.
    """
    out = []
    pos = 0
    for line in text.split("\n"):
        cuts = [0] + [x for m in SENTENCE_BREAK.finditer(line) for x in (m.start(), m.end())] + [len(line)]
        for a, b in zip(cuts[0::2], cuts[1::2]):
            piece = line[a:b]
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                out.append((pos + a + lead, pos + a + len(piece.rstrip())))
        pos += len(line) + 1
    return out


def translation_lines(text: str) -> list[tuple[int, int]]:
    """Offsets of the sentence lines of an English CodiEsp file: lines with at least one letter
    (the translation has stray lines such as ``1.`` that match no Spanish sentence)."""
    out, pos = [], 0
    for line in text.split("\n"):
        if _LETTER.search(line):
            out.append((pos, pos + len(line)))
        pos += len(line) + 1
    return out


def resolve_codiesp_dir(path: Optional[str | os.PathLike] = None) -> Path:
    """``path``, else ``$RK_CODIESP_DIR``, else :data:`DEFAULT_CODIESP_DIR` (relative paths from
    the repository root); then the folder below it that holds ``train/trainD.tsv``."""
    env = os.environ.get("RK_CODIESP_DIR")
    chosen, source = ((path, "data.codiesp_dir") if path else (env, "$RK_CODIESP_DIR") if env
                      else (DEFAULT_CODIESP_DIR, "the default location"))
    root = resolve_path(chosen)
    found = _find_codiesp_root(root)
    if found is None:
        hint = (f" ($RK_CODIESP_DIR={env} is not used while data.codiesp_dir is set)" if path and env else "")
        raise DataError(
            f"CodiEsp folder not found at {root}, from {source} (no train/trainD.tsv below it){hint}: set "
            f"data.codiesp_dir or RK_CODIESP_DIR, or fetch it with rationale_kit.data.download_codiesp"
        )
    return found


def _find_codiesp_root(root: Path) -> Optional[Path]:
    if (root / "train" / "trainD.tsv").exists():
        return root
    if root.is_dir():
        for pattern in ("*/train/trainD.tsv", "*/*/train/trainD.tsv"):
            hits = sorted(root.glob(pattern))
            if hits:
                return hits[0].parent.parent
    return None


_POSITIONS = re.compile(r"^\d+ \d+(;\d+ \d+)*$")


def load_codiesp(
    root: Optional[str | os.PathLike] = None,
    language: Literal["es", "en"] = "es",
    fewshot_pool: int = 100,
    seed: int = 0,
    credentialed: bool = False,
) -> Dataset:
    """CodiEsp v4 (CLEF eHealth 2020): 1,000 clinical cases, train 500 / dev (-> ``val``) 250 /
    test 250, coded with ICD-10-CM diagnoses (``{split}D.tsv``, dotted) and ICD-10-PCS procedures
    (``{split}P.tsv``); human evidence in ``{split}X.tsv``.

    ``language="es"``: the Spanish ``text_files/`` with the native spans; each piece of a
    discontinuous evidence (``"s e;s e"``) is one ``mention`` span, the pieces sharing ``group``
    (``"<split>X.tsv:<line>"``; a piece shared by several evidences of the same code is one span
    whose ``group`` lists their ids, comma-separated). Each evidence's text is compared with the note (whitespace
    normalised, pieces joined by a space); mismatches are counted and listed in ``report`` and kept.
    Empty pieces (``s == s``) are counted and skipped. ``language="en"``: the text is the English
    machine translation's lines joined by ``"\\n"``; where the Spanish sentence count
    (:func:`split_sentences`) equals the number of English sentence lines
    (:func:`translation_lines`), each Spanish span maps to the whole English line(s) of its
    sentence(s) (granularity ``sentence``; one span per code and line, ``group`` listing the
    evidences it came from); other documents keep their codes
    and get no spans (``report["english projection"]`` gives the coverage).

    ``annotated`` = the document has spans; ``fewshot_pool`` annotated training documents (seeded
    choice) are marked ``fewshot``.
    """
    if language not in ("es", "en"):
        raise ValueError(f"language must be 'es' or 'en', got {language!r}")
    base = resolve_codiesp_dir(root)
    report: dict = {"dataset": "codiesp", "language": language, "root": str(base), "read": Counter(),
                    "skipped": Counter(), "merged": Counter(), "warnings": Counter(), "text mismatches": []}
    doc_rows: list[dict] = []
    span_rows: list[dict] = []
    projection = {s: {"documents": 0, "projected": 0, "spanish spans": 0, "projected spans": 0} for s in SPLITS}
    for folder, split in CODIESP_SPLITS.items():
        d = base / folder
        texts = _read_texts(d / "text_files", folder, report)
        codes = _read_code_rows(d, folder, texts, report)
        native = _read_evidence(d / f"{folder}X.tsv", folder, texts, codes, report)
        for doc in sorted(texts):
            if not codes[doc]:
                report["warnings"]["documents without codes (kept)"] += 1
            doc_spans = native.get(doc, [])
            text = texts[doc]
            if language == "en":
                got = _project_english(d / "text_files_en" / f"{doc}.txt", text, doc_spans, projection[split], report)
                if got is None:
                    continue
                doc_spans, text = got
            span_rows.extend(doc_spans)
            doc_rows.append({"note_id": doc, "text": text, "codes": list(codes[doc]), "split": split,
                             "annotated": bool(doc_spans), "fewshot": False, "credentialed": credentialed})
    docs = docs_frame(doc_rows)
    spans = spans_frame(span_rows, ["group"])
    docs = mark_fewshot(docs, fewshot_pool, seed)
    _finish_report(report, docs, spans, language, projection)
    return Dataset(f"codiesp_{language}", docs, spans, codes_table(docs), report)


def _read_texts(text_dir: Path, folder: str, report: dict) -> dict[str, str]:
    """``document id -> text`` of the non-empty ``*.txt`` files of ``text_dir``."""
    if not text_dir.is_dir():
        raise DataError(f"{text_dir}: folder not found")
    texts: dict[str, str] = {}
    for p in sorted(text_dir.glob("*.txt")):
        t = read_text_file(p)
        if not t.strip():
            report["skipped"]["empty documents"] += 1
            continue
        texts[p.stem] = t
    report["read"][f"{folder} text files"] = len(texts)
    return texts


def _read_code_rows(d: Path, folder: str, texts: dict[str, str], report: dict) -> defaultdict:
    """``document id -> codes`` from ``{folder}D.tsv`` (CM) then ``{folder}P.tsv`` (PCS), in file order."""
    codes: dict[str, list[str]] = defaultdict(list)
    for kind, system in (("D", "cm"), ("P", "pcs")):
        path = d / f"{folder}{kind}.tsv"
        rows = read_tsv(path, 2)
        report["read"][f"{folder}{kind}.tsv rows"] = len(rows)
        for lineno, (doc, code) in rows:
            try:
                c = icd.normalize_code(code, system)
            except icd.CodeError as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from None
            if doc not in texts:
                report["skipped"]["code rows of documents without a text file"] += 1
                continue
            if c in codes[doc]:
                report["skipped"]["repeated code rows of a document"] += 1
                continue
            codes[doc].append(c)
    return codes


def _read_evidence(xpath: Path, folder: str, texts: dict[str, str], codes: defaultdict,
                   report: dict) -> dict[str, list[dict]]:
    """``document id -> mention spans`` of ``{folder}X.tsv``: one span per piece of an evidence,
    pieces shared by several evidences of one code merged (their groups joined)."""
    xrows = read_tsv(xpath, 5)
    report["read"][f"{folder}X.tsv rows"] = len(xrows)
    native: dict[str, list[dict]] = defaultdict(list)
    for lineno, (doc, label, code, evidence, positions) in xrows:
        where = f"{xpath}:{lineno}"
        if label not in ("DIAGNOSTICO", "PROCEDIMIENTO"):
            raise DataError(f"{where}: label must be DIAGNOSTICO or PROCEDIMIENTO, got {label!r}")
        try:
            c = icd.normalize_code(code, "cm" if label == "DIAGNOSTICO" else "pcs")
        except icd.CodeError as exc:
            raise DataError(f"{where}: {exc}") from None
        if doc not in texts:
            report["skipped"]["evidence rows of documents without a text file"] += 1
            continue
        pieces = _evidence_pieces(where, doc, texts[doc], evidence, positions, report)
        if c not in codes[doc]:
            report["warnings"]["evidence codes not among the document's D/P codes (kept)"] += 1
        for s, e in pieces:
            if e == s:
                report["skipped"]["empty pieces of discontinuous evidence"] += 1
                continue
            native[doc].append({"note_id": doc, "code": c, "start": s, "end": e, "granularity": "mention",
                                "source": "human", "group": f"{folder}X.tsv:{lineno}"})
    for doc in native:
        merged: dict[tuple, dict] = {}
        for r in native[doc]:
            key = (r["code"], r["start"], r["end"])
            if key in merged:
                report["merged"]["pieces shared by several evidences of one code (one span, groups joined)"] += 1
                merged[key]["group"] += "," + r["group"]
            else:
                merged[key] = r
        native[doc] = list(merged.values())
    return native


def _evidence_pieces(where: str, doc: str, text: str, evidence: str, positions: str,
                     report: dict) -> list[tuple[int, ...]]:
    """The ``(start, end)`` pieces of one evidence row, checked against the note (a text mismatch is
    counted and listed, and kept)."""
    if not _POSITIONS.match(positions.strip()):
        raise DataError(f"{where}: malformed positions {positions!r} (expected \"start end[;start end]\")")
    pieces = [tuple(int(x) for x in p.split()) for p in positions.strip().split(";")]
    for s, e in pieces:
        if not (0 <= s <= e <= len(text)):
            raise DataError(f"{where}: offsets [{s}, {e}) outside document {doc!r} of length {len(text)}")
    covered = " ".join(text[s:e] for s, e in pieces if e > s)
    if collapse_ws(covered) != collapse_ws(evidence):
        report["warnings"]["evidence text differs from the note text at its offsets (kept)"] += 1
        if len(report["text mismatches"]) < 20:
            report["text mismatches"].append(f"{where}: evidence {evidence!r} vs note {covered!r}")
    return pieces


def _project_english(en_path: Path, text: str, doc_spans: list[dict], counts: dict,
                     report: dict) -> Optional[tuple[list[dict], str]]:
    """``(spans, English text)`` of one document, or None without a translation file. Spans are
    projected only where the sentence counts agree (``counts``: this split's projection counts)."""
    if not en_path.exists():
        report["skipped"]["documents without an English translation file"] += 1
        return None
    lines = read_text_file(en_path).replace("\r", "").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    en_text = "\n".join(lines)
    counts["documents"] += 1
    counts["spanish spans"] += len(doc_spans)
    sentences = split_sentences(text)
    en_lines = translation_lines(en_text)
    projected: list[dict] = []
    if len(sentences) == len(en_lines):
        counts["projected"] += 1
        projected = _spans_to_lines(doc_spans, sentences, en_lines)
        counts["projected spans"] += len(projected)
    return projected, en_text


def _spans_to_lines(doc_spans: list[dict], sentences: list[tuple[int, int]],
                    en_lines: list[tuple[int, int]]) -> list[dict]:
    """One ``sentence`` span per (code, English line) whose Spanish sentence a span overlaps."""
    by_line: dict[tuple, dict] = {}
    for r in doc_spans:
        for i, (ss, se) in enumerate(sentences):
            if not (ss < r["end"] and r["start"] < se):
                continue
            if (r["code"], i) in by_line:
                groups = by_line[(r["code"], i)]["group"].split(",")
                new_groups = [g for g in r["group"].split(",") if g not in groups]
                by_line[(r["code"], i)]["group"] = ",".join(groups + new_groups)
            else:
                ls, le = en_lines[i]
                by_line[(r["code"], i)] = {**r, "start": ls, "end": le, "granularity": "sentence"}
    return list(by_line.values())


def _finish_report(report: dict, docs, spans, language: str, projection: dict) -> None:
    """Kept counts, per-split counts and (English) the projection coverage; counters become dicts."""
    report["kept"] = {"documents": int(len(docs)), "spans": int(len(spans)),
                      "distinct codes": int(len({c for cs in docs["codes"] for c in cs})),
                      "few-shot pool documents": int(docs["fewshot"].sum())}
    report["splits"] = split_counts(docs, spans)
    if language == "en":
        total = {k: sum(p[k] for p in projection.values()) for k in projection["train"]}
        report["english projection"] = {
            **{s: projection[s] for s in SPLITS},
            "coverage (documents whose sentence counts agree)": f"{total['projected']}/{total['documents']}",
            "method": "Spanish sentences (split_sentences) matched by position to the English lines "
                      "with letters; a Spanish span becomes the whole English line of each sentence it overlaps",
        }
    for key in ("read", "skipped", "merged", "warnings"):
        report[key] = dict(report[key])
    if not report["text mismatches"]:
        del report["text mismatches"]


def download_codiesp(dest: str | os.PathLike, url: str, sha256: str, timeout: float = 120.0) -> Path:
    """Download a CodiEsp zip from ``url`` into ``dest``, verify its SHA-256 before unpacking,
    unpack it there and return the folder that holds ``train/`` (``dest`` when none does).

    The archive is streamed with httpx to ``dest/<name>.part``; a checksum mismatch deletes it and
    raises :class:`DataError`; members that would land outside ``dest`` are refused. Never called
    by the loaders: run it once by hand (the Zenodo record of CodiEsp v4 is 3837305).
    """
    import httpx

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(httpx.URL(url).path).name or "codiesp.zip"
    part = dest / f"{name}.part"
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise DataError(f"download of {url} failed: HTTP {resp.status_code}")
            with open(part, "wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {exc}") from None
    except DataError:
        part.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != sha256.strip().lower():
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; the download was deleted")
    target = dest.resolve()
    try:
        with zipfile.ZipFile(part) as zf:
            for member in zf.infolist():
                out = (target / member.filename).resolve()
                if not out.is_relative_to(target):
                    raise DataError(f"{url}: archive member {member.filename!r} would be written outside {dest}")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url}: not a zip archive ({exc})") from None
    finally:
        part.unlink(missing_ok=True)
    return _find_codiesp_root(target) or target


def try_load_codiesp(profile) -> Optional[Dataset]:
    """CodiEsp when its folder is found (profile path, ``$RK_CODIESP_DIR`` or the workplace copy),
    else None. Used by notebook 01 to show real-data statistics beside the embedded corpus."""
    if profile.common.dataset == "codiesp":
        return None
    try:
        root = resolve_codiesp_dir(profile.data.codiesp_dir)
    except DataError:
        return None
    if not root.exists():
        return None
    return load_codiesp(root, profile.data.codiesp_language, seed=profile.common.seed)
