"""The data set a profile names (``common.dataset``): dispatch to the loaders."""
from __future__ import annotations

import pandas as pd

from rationale_kit.core.records import DataError
from rationale_kit.data.codiesp import load_codiesp
from rationale_kit.data.dataset import DATASET_DOC_COLUMNS, Dataset, codes_table, docs_frame, split_counts
from rationale_kit.data.files import resolve_path
from rationale_kit.data.mdace import default_splits_dir, load_mdace_mimic3, mdace_rules
from rationale_kit.data.mimic import load_mimic_with_codes
from rationale_kit.data.spans_jsonl import load_spans_jsonl
from rationale_kit.data.splits import mark_fewshot, restrict_top_codes


def load_dataset(profile) -> Dataset:
    """The data set a profile names, restricted to ``data.top_codes`` when set
    (:func:`restrict_top_codes`); see :func:`_load_dataset`."""
    ds = _load_dataset(profile)
    top = getattr(profile.data, "top_codes", None)
    return restrict_top_codes(ds, top) if top else ds


def _load_dataset(profile) -> Dataset:
    """The data set a profile names (``common.dataset``), with its ``data`` parameters.

    - ``embedded``: :func:`rationale_kit.data.embedded.generate_corpus` (``data.embedded``, ``common.seed``).
    - ``codiesp``: :func:`load_codiesp` (``data.codiesp_dir`` or ``$RK_CODIESP_DIR``,
      ``data.codiesp_language``).
    - ``mimic``: :func:`load_mimic` (``data.mimic_dir`` or ``data.mimic_hosp_dir`` +
      ``data.mimic_note_dir``, ``data.mimic_split_file``, ``data.mimic_min_code_count``) for the
      coding data, plus the rationale evaluation documents of :func:`load_mdace_mimic3`
      (``data.mdace_dir`` + ``data.mimic3_noteevents``, the rules of ``data.mdace_preset`` and the
      ``data.mdace_*`` options, MDACE's splits from ``data.mdace_splits_dir``) and/or spans on MIMIC-IV notes from :func:`load_spans_jsonl`
      (``data.spans_jsonl``). At least one span source is required (checked here, at load time);
      documents are credentialed.
    Texts are kept whole: models cut them to ``data.max_words`` themselves.
    """
    data, seed = profile.data, profile.common.seed
    name = profile.common.dataset
    pool = getattr(data, "fewshot_pool", None)
    if name == "embedded":
        return _load_embedded(data, seed)
    if name == "codiesp":
        kwargs = {} if pool is None else {"fewshot_pool": pool}
        return load_codiesp(data.codiesp_dir, data.codiesp_language, seed=seed,
                            credentialed=bool(data.credentialed), **kwargs)
    if name == "mimic":
        return _load_mimic_profile(data, seed, pool)
    raise DataError(f"unknown dataset {name!r} (use embedded, codiesp or mimic)")


def _load_embedded(data, seed: int) -> Dataset:
    """The generated corpus as a :class:`Dataset` (lexicon codes no document carries: ``n_train`` 0)."""
    from rationale_kit.data import embedded as corpus  # lazy: the generator is only needed for this data set

    c = corpus.generate_corpus(data.embedded, seed)
    docs = c.docs.copy()
    for col in ("annotated", "fewshot"):
        if col not in docs:
            docs[col] = False
    docs["credentialed"] = bool(data.credentialed)
    docs["full_codes"], docs["eval_role"] = True, ""  # every note carries its whole code assignment
    docs = docs_frame(docs[DATASET_DOC_COLUMNS].to_dict("records"))
    descs = dict(zip(c.codes["code"], c.codes["description"])) if len(c.codes) else {}
    codes = codes_table(docs, descriptions=descs)
    extra = sorted(set(c.codes["code"]) - set(codes["code"])) if len(c.codes) else []
    if extra:  # lexicon codes no document carries: keep them with n_train 0
        codes = pd.concat([codes, pd.DataFrame({"code": extra, "description": [descs[x] for x in extra],
                                                "n_train": 0})], ignore_index=True)
    spans = c.spans.reset_index(drop=True)
    report = {"dataset": "embedded", "generator": f"corpus.generate_corpus(seed={seed})",
              "kept": {"documents": int(len(docs)), "spans": int(len(spans)), "codes": int(len(codes))},
              "skipped": {}, "splits": split_counts(docs, spans)}
    return Dataset("embedded", docs, spans, codes, report)


def mdace_profile_rules(data):
    """The :class:`~rationale_kit.data.mdace.MdaceRules` of a profile's ``data`` section: its
    ``mdace_preset`` with every ``mdace_*`` option that is set."""
    return mdace_rules(data.mdace_preset, notes=data.mdace_notes, code_systems=data.mdace_code_systems,
                       known_codes=data.mdace_known_codes, map_per_system=data.mdace_map_per_system,
                       unseen=data.mdace_unseen_codes, trim=data.mdace_trim, beyond_cut=data.mdace_beyond_cut,
                       split=data.mdace_split)


def _check_mimic_location(data) -> None:
    both = [k for k in ("mimic_hosp_dir", "mimic_note_dir") if getattr(data, k)]
    if data.mimic_dir and both:
        raise DataError(f"profile sets both data.mimic_dir and data.{' and data.'.join(both)}: set data.mimic_dir "
                        "(a folder holding hosp/ and note/) or data.mimic_hosp_dir and data.mimic_note_dir, not both")
    if not data.mimic_dir and not (data.mimic_hosp_dir and data.mimic_note_dir):
        raise DataError("profile data.mimic_dir is not set (the folder holding MIMIC-IV note/ and hosp/); "
                        "or set both data.mimic_hosp_dir and data.mimic_note_dir")


def _load_mimic_profile(data, seed: int, pool) -> Dataset:
    """MIMIC-IV coding data plus the rationale evaluation documents and spans the profile names."""
    _check_mimic_location(data)
    if not data.mdace_dir and not data.spans_jsonl:
        raise DataError("mimic profile without rationale spans: set data.mdace_dir (MDACE's data/ folder) and "
                        "data.mimic3_noteevents (MIMIC-III NOTEEVENTS.csv[.gz]), or data.spans_jsonl")
    if data.mdace_dir and not data.mimic3_noteevents:
        raise DataError("data.mdace_dir is set but data.mimic3_noteevents is not: MDACE's offsets refer to "
                        "MIMIC-III discharge summaries (note_id = NOTEEVENTS ROW_ID), so set "
                        "data.mimic3_noteevents to MIMIC-III NOTEEVENTS.csv or .csv.gz")
    ds, mimic_codes = load_mimic_with_codes(data.mimic_dir, data.mimic_split_file, data.mimic_min_code_count, seed,
                                            hosp_dir=data.mimic_hosp_dir, note_dir=data.mimic_note_dir)
    docs, spans, report = ds.docs, [ds.spans], dict(ds.report)
    report["kept"] = {"documents": int(len(docs)), "MIMIC-IV documents (coding)": int(len(docs)),
                      **{k: v for k, v in report.get("kept", {}).items() if k != "documents"}}
    if data.mdace_dir:
        rules = mdace_profile_rules(data)
        splits = (data.mdace_splits_dir or default_splits_dir(data.mdace_dir)) if rules.split == "mdace" else None
        ev_docs, s, report["mdace"] = load_mdace_mimic3(data.mdace_dir, data.mimic3_noteevents, docs, rules,
                                                        mimic_codes=mimic_codes, splits=splits, max_words=data.max_words)
        report["mdace"]["preset"] = data.mdace_preset
        if not len(s):
            raise DataError(f"{resolve_path(data.mdace_dir)}: no MDACE span could be used (see the counts: "
                            f"{report['mdace']['skipped']}); check data.mdace_dir points at MDACE's data/ folder")
        docs = pd.concat([docs, ev_docs], ignore_index=True)
        spans.append(s)
        report["kept"]["MDACE documents (rationale evaluation)"] = int(len(ev_docs))
    if data.spans_jsonl:
        docs, s, report["spans_jsonl"] = load_spans_jsonl(data.spans_jsonl, docs, report.get("empty_note_ids", ()))
        if not len(s):
            raise DataError(f"{resolve_path(data.spans_jsonl)}: no spans in the file (data.spans_jsonl)")
        spans.append(s)
    spans = pd.concat([s for s in spans if len(s)] or [spans[0]], ignore_index=True)
    if pool:
        docs = mark_fewshot(docs, pool, seed)
    report["kept"]["documents"] = int(len(docs))
    report["splits"] = split_counts(docs, spans)
    codes = codes_table(docs, descriptions=dict(zip(ds.codes["code"], ds.codes["description"])))
    return Dataset("mimic", docs, spans, codes, report)
