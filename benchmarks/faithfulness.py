"""Benchmark of the faithfulness engine (rationale_kit.metrics.faithfulness) on this machine.

For each coding model it reports, side by side in one run and on one workload (``--shape notebook``,
the default: what notebook 05 runs per model, see ``workload()``; ``--shape single``: ERASER AOPC on
the model's attention plus one source of random spans; up to 3 gold codes per note, mask
perturbation):

(a) throughput: rows per second through the engine (every forward row it runs: the base pass and
    all perturbed inputs) against plain forward passes of the same model replayed at exactly the
    engine's batch shapes (batch size, padded length, row lengths) on random ids: once reading all
    labels (a plain forward) and once with the engine's ``label_idx`` (so that ratio isolates the
    engine's own overhead: encoding, ranking, building inputs, gathering);
(b) the speed-up over the straightforward loop (``faithfulness_loop``: one full forward pass of
    batch one per note and per (note, code, step)), and the largest difference between the values.

Both are reported for the engine with its incremental paths (``incremental=True``, the default:
CAML on a CPU patches perturbed inputs from cached per-note pre-activations instead of running the
model; PLM-ICD encodes only the chunks a perturbation changes, and the chunks encoded by the engine
and by the loop are printed) and without them (``incremental=False``: batched forward passes), side
by side on the same workload, the engine sharing one ``NoteCache`` per run as notebook 05 does. The
incremental rows/s in (a) counts the same rows as the batched engine (base pass + every perturbed
input) over its own time; LAAT on a CPU recomputes each perturbed row's BiLSTM only where its states
differ from the note's (or the fully masked note's), see docs/method/faithfulness.md.

Times are process CPU seconds with one torch thread (other jobs share this machine's cores, so wall
time is noisy), best of two round-robin repetitions. Models: ``rationale_kit.models.build_model``
(CAML and LAAT at the default profile's sizes, PLM-ICD at each ``--plm-chunks`` value of
``max_chunks``, default 2 and 8; untrained weights,
which does not change the cost) when it imports and builds, else the contract-conforming CNN and
BiLSTM with label attention defined here (``--fallback`` forces them); the output says which.
``--big-labels`` adds CAML and LAAT (those of ``--models``) with a MIMIC-like label count, where
reading only the needed labels matters. Workloads are sized from a probe to about ``--budget`` CPU
seconds in all, or fixed by ``--pairs`` ((note, code) pairs per model; notebook 05 scores up to
``faithfulness.max_pairs`` = 60 per source) with ``--codes-per-note`` codes of each note.

At the end, for each PLM-ICD model, the chunks its encoder reads on notebook 05's whole workload
(``--plm-count-pairs`` (note, code) pairs, default the default profile's ``faithfulness.max_pairs``)
are counted without running the encoder (``plm_chunk_counts``): by the engine's chunk path, by the
loop, and by a perfect store (each distinct chunk of a note once over all calls). A chunk costs
the same whatever the batch on a CPU, so their ratio bounds the speed-up of exact chunk reuse
(docs/method/faithfulness.md).

For each LAAT model, the recurrence steps its state reuse path computes are counted
(``StepCounter``) and the cost of one step is measured against the model's own ``nn.LSTM``
(``lstm_step_costs``): the steps times that cost bound the path's speed-up from above.

``--device cuda`` runs the models, the engine and the loop on the GPU; times are then wall seconds
between ``torch.cuda.synchronize()`` calls (process CPU time does not measure GPU work), and the
budget is in wall seconds. The default ``--device cpu`` measures exactly as described above.

    .venv/bin/python benchmarks/faithfulness.py [--threads 1] [--budget 70] [--big-labels 2000] [--device cpu]
        [--models caml,laat,plm_icd] [--shape notebook|single] [--plm-chunks 2,8] [--pairs 0]
        [--codes-per-note 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rationale_kit.core.sources import ATTENTION, ENTITY_CATEGORY, ENTITY_EXACT, LLM_FEW, LLM_ZERO  # noqa: E402
from rationale_kit.metrics.faithfulness import (  # noqa: E402
    NoteCache, faithfulness_discrete, faithfulness_loop, faithfulness_scored,
)

BATCH = 32
N_LABELS = 60
AOPC_K = [1.0, 5.0, 10.0, 20.0, 50.0]
EDIN_STEPS = 6  # the default profile's faithfulness.word_steps
DISCRETE_SOURCES = tuple(s.name for s in (ENTITY_EXACT, ENTITY_CATEGORY, LLM_ZERO, LLM_FEW))


# --------------------------------------------------------------------------------------------
# fallback model: CNN + label attention (CAML-like), implementing docs/INTERFACES.md
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor
    offsets: torch.Tensor


@dataclass
class ModelOutput:
    logits: torch.Tensor
    attention: torch.Tensor


class WordTokenizer:
    pad_id, mask_id, unk_id = 0, 1, 2

    def __init__(self, vocab: dict[str, int], max_len: int = 4000):
        self.vocab, self.max_len = vocab, max_len

    def encode(self, text: str) -> Encoded:
        ms = list(re.finditer(r"\w+", text))[: self.max_len]
        ids = [self.vocab.get(m.group().lower(), self.unk_id) for m in ms]
        offs = [m.span() for m in ms]
        return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(offs, dtype=torch.long).reshape(-1, 2))


class CNNLabelAttention(torch.nn.Module):
    """Embedding -> Conv1d (same padding) -> tanh -> per-label attention -> per-label logit."""

    def __init__(self, labels, tokenizer, vocab_size, embed_dim=100, filters=50, kernel=10):
        super().__init__()
        self.labels, self.tokenizer = list(labels), tokenizer
        self.emb = torch.nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = torch.nn.Conv1d(embed_dim, filters, kernel)
        self.kernel = kernel
        self.U = torch.nn.Parameter(torch.randn(len(labels), filters) * 0.1)
        self.W = torch.nn.Parameter(torch.randn(len(labels), filters) * 0.1)
        self.b = torch.nn.Parameter(torch.zeros(len(labels)))
        self.name = "cnn_fallback"

    def collate(self, encs):
        T = max(len(e.ids) for e in encs)
        ids = torch.zeros((len(encs), T), dtype=torch.long)
        mask = torch.zeros((len(encs), T), dtype=torch.bool)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = True
        return ids, mask

    def embed(self, input_ids):
        return self.emb(input_ids)

    def forward(self, input_ids, attention_mask=None, label_idx=None):
        return self.forward_from_embeddings(self.embed(input_ids), attention_mask, label_idx)

    def forward_from_embeddings(self, embeds, attention_mask=None, label_idx=None):
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        embeds = embeds * attention_mask[..., None]
        x = torch.nn.functional.pad(embeds.transpose(1, 2), ((self.kernel - 1) // 2, self.kernel // 2))
        H = torch.tanh(self.conv(x)).transpose(1, 2)  # [B, T, F] ("same" length)
        U, W, b = self.U, self.W, self.b
        if label_idx is not None:
            U, W, b = U[label_idx], W[label_idx], b[label_idx]
        scores = torch.einsum("btf,kf->bkt", H, U).float()
        scores = scores.masked_fill(~attention_mask[:, None, :], float("-inf"))
        A = torch.softmax(scores, dim=-1)
        V = torch.einsum("bkt,btf->bkf", A, H)
        logits = (V * W[None]).sum(-1) + b
        return ModelOutput(logits.float(), A)


class BiLSTMLabelAttention(CNNLabelAttention):
    """LAAT-like: embedding -> BiLSTM (packed) -> Z = tanh(H W1); A = softmax(Z W2); V = A H."""

    def __init__(self, labels, tokenizer, vocab_size, embed_dim=100, hidden=128, projection=128):
        torch.nn.Module.__init__(self)
        self.labels, self.tokenizer = list(labels), tokenizer
        self.emb = torch.nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = torch.nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.W1 = torch.nn.Linear(2 * hidden, projection, bias=False)
        self.W2 = torch.nn.Parameter(torch.randn(len(labels), projection) * 0.1)
        self.W = torch.nn.Parameter(torch.randn(len(labels), 2 * hidden) * 0.1)
        self.b = torch.nn.Parameter(torch.zeros(len(labels)))
        self.name = "laat_fallback"

    def forward_from_embeddings(self, embeds, attention_mask=None, label_idx=None):
        B, T = embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones((B, T), dtype=torch.bool, device=embeds.device)
        lengths = attention_mask.sum(1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(embeds, lengths, batch_first=True, enforce_sorted=False)
        H, _ = self.lstm(packed)
        H, _ = torch.nn.utils.rnn.pad_packed_sequence(H, batch_first=True, total_length=T)
        W2, W, b = self.W2, self.W, self.b
        if label_idx is not None:
            W2, W, b = W2[label_idx], W[label_idx], b[label_idx]
        Z = torch.tanh(self.W1(H))
        scores = torch.einsum("btp,kp->bkt", Z, W2).float()
        scores = scores.masked_fill(~attention_mask[:, None, :], float("-inf"))
        A = torch.softmax(scores, dim=-1)
        V = torch.einsum("bkt,bth->bkh", A, H)
        return ModelOutput(((V * W[None]).sum(-1) + b).float(), A)


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------
def make_corpus(n_notes: int, rng: np.random.Generator, min_words=600, max_words=2400):
    words = [f"w{i}" for i in range(3000)]
    texts = []
    for _ in range(n_notes):
        n = int(rng.integers(min_words, max_words))
        toks = rng.choice(words, size=n)
        texts.append(" ".join(toks) + ".")
    vocab = {w: i + 3 for i, w in enumerate(words)}
    return texts, vocab


def project_models(texts, vocab, labels, names=("caml", "laat", "plm_icd"), plm_chunks=(2,)):
    """Untrained models from ``rationale_kit.models.build_model(name, params, labels,
    train_texts=...)`` at the default profile's sizes; PLM-ICD once per ``plm_chunks`` value of
    ``max_chunks`` (named ``plm_icd`` for the first, ``plm_icd@<n>chunks`` for the others).
    Raises when the module is missing or does not build."""
    from rationale_kit.core.config import load_profile
    from rationale_kit.models import build_model

    prof = load_profile("default")
    out = {}
    for name in names:
        params = getattr(prof.train, name)
        variants = [(name, params)]
        if name == "plm_icd":
            variants = [(name if i == 0 else f"{name}@{n}chunks", dataclasses.replace(params, max_chunks=n))
                        for i, n in enumerate(plm_chunks)]
        for key, p in variants:
            torch.manual_seed(0)
            out[key] = build_model(name, p, labels, train_texts=texts, max_words=prof.data.max_words)
    return out, (f"rationale_kit.models.build_model (default profile sizes; PLM-ICD max_chunks "
                 f"{', '.join(map(str, plm_chunks))} of {prof.train.plm_icd.chunk_size} tokens; untrained weights)")


def fallback_models(vocab, labels, names=("caml", "laat")):
    torch.manual_seed(0)
    tok = WordTokenizer(vocab)
    classes = {"caml": ("cnn_fallback", CNNLabelAttention), "laat": ("laat_fallback", BiLSTMLabelAttention)}
    models = {classes[n][0]: classes[n][1](labels, tok, len(vocab) + 3) for n in names if n in classes}
    return models, ("fallback models defined in benchmarks/faithfulness.py: CNN with label attention "
                    "(CAML sizes: 100-d, 50 filters, kernel 10) and BiLSTM with label attention "
                    "(LAAT, default profile: hidden 128, projection 128)")


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------
class Recorder:
    """Forward hook recording (batch, length, labels read) of every call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        ids = args[0] if args else kwargs["input_ids"]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        lab = kwargs.get("label_idx", args[2] if len(args) > 2 else None)
        lengths = None if mask is None else mask.sum(1).cpu()
        self.calls.append((ids.shape[0], ids.shape[1], None if lab is None else lab.detach().cpu().clone(), lengths))

    def rows(self):
        return sum(c[0] for c in self.calls)


class EncoderRows:
    """Counts the chunks a PLM-ICD encoder reads (rows of ``inputs_embeds``); no-op for models
    without an ``encoder``."""

    def __init__(self, model):
        self.rows = 0
        enc = getattr(model, "encoder", None)
        self.handle = None if enc is None else enc.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        x = kwargs.get("inputs_embeds", args[0] if args else None)
        self.rows += 0 if x is None else x.shape[0]

    def remove(self):
        if self.handle is not None:
            self.handle.remove()


def attention_scores(model, docs, gold, device="cpu"):
    rows = []
    lab = {c: i for i, c in enumerate(model.labels)}
    with torch.inference_mode():
        for nid, text in zip(docs.note_id, docs.text):
            enc = model.tokenizer.encode(text)
            codes = gold[nid]
            ids, mask = model.collate([enc])
            out = model(ids.to(device), attention_mask=mask.to(device),
                        label_idx=torch.tensor([lab[c] for c in codes], device=device))
            att = out.attention[0, :, : len(enc.ids)].float().cpu().numpy()
            offs = np.asarray(enc.offsets)
            for k, code in enumerate(codes):
                for u in range(len(offs)):
                    rows.append((nid, code, "attention", "attention", model.name if hasattr(model, "name") else "m",
                                 u, int(offs[u, 0]), int(offs[u, 1]), float(att[k, u])))
    return pd.DataFrame(rows, columns=["note_id", "code", "source", "method", "model", "unit", "start", "end", "score"])


def random_spans(docs, gold, rng):
    rows = []
    for nid, text in zip(docs.note_id, docs.text):
        for code in gold[nid]:
            for _ in range(3):
                s = int(rng.integers(0, len(text) - 60))
                rows.append((nid, code, s, s + int(rng.integers(5, 60)), "", "llm"))
    return pd.DataFrame(rows, columns=["note_id", "code", "start", "end", "granularity", "source"])


#: Perturbed inputs per (note, code) of each workload shape (for sizing).
ROWS_PER_PAIR = {"notebook": 2 * (4 * len(AOPC_K) + 2 * (2 * EDIN_STEPS - 1)) + 4 * len(DISCRETE_SOURCES) + 4,
                 "single": 2 * 2 * len(AOPC_K) + 4}


def workload(model, docs, gold, rng, shape: str, device="cpu"):
    """The engine calls of one model: ``[(function, loop kind, table, keyword arguments)]``.

    ``notebook``: what notebook 05 runs per model (``steps.faithfulness_tables``): one discrete
    call over every span source (four sources of random spans standing in for the entity and LLM
    sources, plus the model's top-10 attention units as spans), one ERASER call and one Edin call
    (word units, ``EDIN_STEPS`` steps) over the model's two scored sources (its attention, and its
    attention times log-normal noise standing in for gradients). ``single``: one ERASER call on
    the attention and one discrete call on one source of random spans."""
    att = attention_scores(model, docs, gold, device)
    if shape == "single":
        return [(faithfulness_scored, "eraser", att, dict(aopc_k=AOPC_K)),
                (faithfulness_discrete, "discrete", random_spans(docs, gold, rng), {})]
    noisy = att.assign(source="gradient", method="input_x_gradient",
                       score=att.score * rng.lognormal(0.0, 1.0, len(att)))
    scored = pd.concat([att, noisy], ignore_index=True)
    top = (att.sort_values("score", ascending=False, kind="stable").groupby(["note_id", "code"]).head(10)
           .assign(source=ATTENTION.with_top_k(10).name, granularity="")[["note_id", "code", "start", "end", "granularity", "source"]])
    spans = pd.concat([random_spans(docs, gold, rng).assign(source=src) for src in DISCRETE_SOURCES] + [top],
                      ignore_index=True)
    return [(faithfulness_discrete, "discrete", spans, {}),
            (faithfulness_scored, "eraser", scored, dict(aopc_k=AOPC_K)),
            (faithfulness_scored, "edin", scored, dict(variant="edin", unit="word", word_steps=EDIN_STEPS))]


def replay_plain(model, calls, with_labels: bool, vocab_size: int, device="cpu") -> tuple[float, int]:
    """Forward passes at the recorded shapes (batch, padded length, row lengths) on random ids,
    without any perturbation machinery; returns (wall seconds, rows)."""
    g = torch.Generator().manual_seed(0)
    inputs = []
    for B, T, lab, lengths in calls:
        ids = torch.randint(5, vocab_size, (B, T), generator=g)
        mask = torch.ones((B, T), dtype=torch.bool) if lengths is None else (
            torch.arange(T)[None, :] < lengths[:, None])
        if with_labels and lab is not None:
            lab = lab.to(device)
        inputs.append((ids.to(device), mask.to(device), lab if with_labels else None))
    t0 = time.perf_counter()
    rows = 0
    with torch.inference_mode():
        for ids, mask, lab in inputs:
            model(ids, attention_mask=mask, label_idx=lab)
            rows += ids.shape[0]
    return time.perf_counter() - t0, rows


def cpu_timed(fn, device="cpu"):
    """(CPU seconds of this process, result): with one torch thread this is the compute time,
    insensitive to other processes sharing the cores (wall time is not). On a CUDA device: wall
    seconds between two ``torch.cuda.synchronize()`` calls instead."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, out
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


class InputRecorder:
    """Records the perturbed inputs of the batched engine (``incremental=False``): per note its
    ids and every removal mask, for :func:`reuse_ceilings`."""

    def __init__(self):
        from rationale_kit.metrics.faithfulness import generic as E  # the batched path

        self.E, self.orig = E, E._evaluate_batched
        self.inputs: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}

        def wrapped(model, jobs, *args, **kwargs):
            for j in jobs:
                self.inputs.setdefault(j.note.note_id, (j.note.ids, []))[1].append(j.removed)
            return self.orig(model, jobs, *args, **kwargs)
        E._evaluate_batched = wrapped

    def remove(self):
        self.E._evaluate_batched = self.orig


class StepCounter:
    """Counts, for the LAAT state reuse path (``lstm_reuse._recur`` with a tolerance), the
    recurrence steps it computes (rows x steps, both directions) against the steps of those rows'
    full recurrences (what the loop computes)."""

    def __init__(self):
        from rationale_kit.metrics.faithfulness import lstm_reuse

        self.module, self.orig = lstm_reuse, lstm_reuse._recur
        self.computed = self.full = 0

        def counting(dirs, gx, X, diff, lengths, base_h, base_c, base_at, tol, keep_c=False):
            out = self.orig(dirs, gx, X, diff, lengths, base_h, base_c, base_at, tol, keep_c)
            if tol >= 0:  # perturbed rows (the notes' own states are computed once, with tol < 0)
                self.computed += sum(len(rows) for rows, *_ in out)
                self.full += 2 * int(np.sum(lengths))
            return out

        lstm_reuse._recur = counting

    def remove(self):
        self.module._recur = self.orig


def lstm_step_costs(model, rows: int = 2048, steps: int = 32, reps: int = 3) -> tuple[float, float]:
    """CPU microseconds per (row, step), both directions, of LAAT's recurrence: the state reuse
    path's own (``lstm_reuse._recur`` computing every step, input projections included) and the
    model's ``nn.LSTM`` pair (oneDNN, what the loop runs), on the same ``rows`` x ``steps`` random
    ids; best of ``reps``. If the two are equal, the path's speed-up over the loop is bounded by the
    loop's steps over the steps the path computes."""
    from rationale_kit.metrics.faithfulness import lstm_reuse

    dirs = lstm_reuse._laat_dirs(model)
    g = np.random.default_rng(0)
    X = g.integers(4, model.embedding.num_embeddings, size=(2, rows, steps))
    uniq, xi = np.unique(X, return_inverse=True)
    xi = xi.reshape(X.shape)
    diff = np.ones_like(X, dtype=bool)
    lengths = np.full(rows, steps, dtype=np.int64)
    zeros = torch.zeros(steps + 1, dirs[0].H)
    u_t = torch.as_tensor(uniq)

    def path():
        lstm_reuse._recur(dirs, [d.gates_x(u_t) for d in dirs], xi, diff, lengths, [zeros, zeros], [zeros, zeros],
                          np.zeros(rows, dtype=np.int64), tol=-1.0)

    emb = [model.embedding(torch.as_tensor(X[k])) for k in range(2)]

    def onednn():
        model.lstm_fwd(emb[0])
        model.lstm_bwd(emb[1])

    best = {}
    with torch.inference_mode():
        for fn in (path, onednn):
            fn()  # warm-up
        for _ in range(reps):
            for fn in (path, onednn):
                t, _ = cpu_timed(fn)
                best[fn] = min(best.get(fn, t), t)
    per = 1e6 / (2 * rows * steps)
    return best[path] * per, best[onednn] * per


def _trie_positions(rows: list[np.ndarray], base: np.ndarray) -> int:
    """Positions a left-to-right recurrence must compute for ``rows`` when every prefix already
    computed (for the note itself or an earlier row) is reused: the size of their prefix trie
    minus the note's own path."""
    seqs = sorted([base.tobytes()] + [r.tobytes() for r in rows])
    item = base.itemsize
    total = 0
    for prev, cur in zip(seqs, seqs[1:]):
        a, b = np.frombuffer(prev, dtype=base.dtype), np.frombuffer(cur, dtype=base.dtype)
        ne = np.flatnonzero(a != b)
        total += len(b) - (int(ne[0]) if len(ne) else len(b))
    del item
    return total


def reuse_ceilings(model, inputs: dict, mask_id: int) -> dict:
    """What an exact reuse of shared computation could at best save on this workload (mask
    perturbation): the share of distinct perturbed inputs; for a recurrent encoder (LAAT's
    BiLSTM) the share of recurrence steps left when every prefix (forward) and suffix (backward)
    already computed is reused; for a chunked encoder (PLM-ICD) the loop's chunks per distinct
    chunk of a note over all calls."""
    rows = distinct = steps_all = steps_needed = chunks_loop = chunks_distinct = 0
    s = getattr(model, "chunk_size", None)
    recurrent = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
    for ids, removed in inputs.values():
        xs = [np.where(r, mask_id, ids) for r in removed if len(r) == len(ids)]
        rows += len(xs)
        distinct += len({x.tobytes() for x in xs})
        if recurrent:
            steps_all += 2 * len(ids) * len(xs)
            steps_needed += _trie_positions(xs, ids) + _trie_positions([x[::-1].copy() for x in xs], ids[::-1].copy())
        elif s is not None:
            bounds = [(a, min(a + s, len(ids))) for a in range(0, len(ids), s)]
            chunks_loop += len(bounds) * (len(xs) + 1)
            chunks_distinct += len({x[a:b].tobytes() for x in [ids, *xs] for a, b in bounds})
    out = {"rows": rows, "distinct_share": distinct / max(1, rows)}
    if recurrent:
        out["recurrent_steps_share"] = steps_needed / max(1, steps_all)
    if s is not None:
        out["chunks_loop_per_distinct"] = chunks_loop / max(1, chunks_distinct)
    return out


def bench_model(name, model, docs_all, gold_all, budget_s, rng, reps=2, device="cpu", shape="notebook",
                pairs=None, codes_per_note=1):
    """One workload (``pairs`` (note, code) pairs, ``codes_per_note`` codes of each note; by
    default sized so the loop takes about a third of ``budget_s`` in all), measured
    ``reps`` times round-robin (engine with its forward calls recorded, plain forward passes
    replayed at the recorded shapes, the loop); the fastest repetition of each counts. The model
    must already be on ``device``."""
    model.eval()
    vocab_size = int(getattr(model.tokenizer, "vocab_size", 0) or 3000)
    # probe: cost of one single-row forward pass of a typical note
    enc = model.tokenizer.encode(docs_all.text.iloc[0])
    with torch.inference_mode():
        model(*(x.to(device) for x in model.collate([enc])))
        per_single, _ = cpu_timed(lambda: model(*(x.to(device) for x in model.collate([enc]))), device)
    rows_per_pair = ROWS_PER_PAIR[shape]
    # per repetition: the loop, two engine runs and two replays (each a fraction of the loop):
    # about 4 loops' worth, so the loop gets an eighth of the model's budget over two repetitions
    n_pairs = pairs or max(1, int(budget_s / (4 * reps) / per_single / rows_per_pair))
    n_notes = max(1, min(len(docs_all), math.ceil(n_pairs / codes_per_note)))
    docs = docs_all.iloc[:n_notes].reset_index(drop=True)
    gold = {n: list(gold_all[n][:codes_per_note]) for n in docs.note_id}
    jobs = workload(model, docs, gold, rng, shape, device)
    kw = dict(code_set="gold", gold=gold, progress=False, seed=0, device=device)

    def engine(incremental=False):
        cache = NoteCache()  # one per run, as steps.faithfulness_tables does per model
        return pd.concat([fn(model, docs, table, batch_size=BATCH, incremental=incremental, cache=cache,
                             **args, **kw) for fn, _, table, args in jobs])

    def loop():
        return pd.concat([faithfulness_loop(model, docs, table, kind=kind, **args, **kw)
                          for _, kind, table, args in jobs])

    times = {"engine": [], "incr": [], "plain": [], "plain_lab": [], "loop": []}
    inputs = InputRecorder()
    for rep in range(reps):
        rec = Recorder(model)
        t, fast = cpu_timed(engine, device)
        rec.handle.remove()
        if rep == 0:
            inputs.remove()
        times["engine"].append(t)
        rec_incr, enc_incr, steps_incr = Recorder(model), EncoderRows(model), StepCounter()
        t, fast_incr = cpu_timed(lambda: engine(True), device)
        rec_incr.handle.remove()
        enc_incr.remove()
        steps_incr.remove()
        times["incr"].append(t)
        incr_calls = len(rec_incr.calls)
        calls, rows = rec.calls, rec.rows()
        t, (_, plain_rows) = cpu_timed(lambda: replay_plain(model, calls, False, vocab_size, device), device)
        times["plain"].append(t)
        t, _ = cpu_timed(lambda: replay_plain(model, calls, True, vocab_size, device), device)
        times["plain_lab"].append(t)
        rec, enc_loop = Recorder(model), EncoderRows(model)
        t, slow = cpu_timed(loop, device)
        rec.handle.remove()
        enc_loop.remove()
        times["loop"].append(t)
        loop_calls = len(rec.calls)
    t_engine, t_incr, t_plain, t_plain_lab, t_loop = (
        min(times[k]) for k in ("engine", "incr", "plain", "plain_lab", "loop"))

    keys = ["note_id", "code", "source", "measure", "k", "control"]
    slow = slow.sort_values(keys).reset_index(drop=True)

    def diff(fast):
        fast = fast.sort_values(keys).reset_index(drop=True)
        same = fast[keys].astype(str).equals(slow[keys].astype(str))
        return same, (float(np.abs(fast.value.to_numpy() - slow.value.to_numpy()).max()) if same else float("nan"))

    same_keys, max_diff = diff(fast)
    same_keys_incr, max_diff_incr = diff(fast_incr)
    fast = fast.sort_values(keys).reset_index(drop=True)
    lengths = [T for _, T, _, _ in calls]
    return {
        "model": name,
        "labels": len(model.labels),
        "notes": n_notes,
        "pairs": int(fast[["note_id", "code", "source"]].drop_duplicates().shape[0]),
        "mean_len": float(np.mean(lengths)),
        "engine_rows": rows,
        "engine_calls": len(calls),
        "engine_s": t_engine,
        "engine_rows_per_s": rows / t_engine,
        "plain_rows_per_s": plain_rows / t_plain,
        "plain_same_labels_rows_per_s": plain_rows / t_plain_lab,
        "ratio_vs_plain": (rows / t_engine) / (plain_rows / t_plain),
        "ratio_vs_plain_same_labels": (rows / t_engine) / (plain_rows / t_plain_lab),
        "loop_calls": loop_calls,
        "loop_s": t_loop,
        "speedup_vs_loop": t_loop / t_engine,
        "max_abs_diff": max_diff,
        # on a GPU, TF32 and batch-size-dependent kernels move probabilities by ~1e-6
        "tolerance": (tol := 1e-6 if str(device).startswith("cpu") else 1e-4),
        "agree": bool(same_keys and max_diff <= tol),
        "incr_s": t_incr,
        "incr_calls": incr_calls,
        "incr_rows_per_s": rows / t_incr,
        "incr_ratio_vs_plain": (rows / t_incr) / (plain_rows / t_plain),
        "incr_ratio_vs_plain_same_labels": (rows / t_incr) / (plain_rows / t_plain_lab),
        "incr_speedup_vs_loop": t_loop / t_incr,
        "incr_max_abs_diff": max_diff_incr,
        "incr_agree": bool(same_keys_incr and max_diff_incr <= tol),
        "ceilings": reuse_ceilings(model, inputs.inputs, int(model.tokenizer.mask_id)),
        "steps_computed": steps_incr.computed,
        "steps_computed_share": steps_incr.computed / steps_incr.full if steps_incr.full else None,
        "chunks_engine": enc_incr.rows,
        "chunks_loop": enc_loop.rows,
    }


def plm_chunk_counts(model, docs_all, gold_all, rng, n_pairs: int) -> dict:
    """Chunks the PLM-ICD encoder reads on notebook 05's whole workload (``n_pairs`` (note, code)
    pairs, one code per note, every source of ``workload("notebook")``), counted without running
    the encoder (the chunk path's encodings replaced by zeros: which chunks it encodes depends only
    on the ids): by the engine's chunk path with one ``NoteCache`` for the three calls, by the loop
    (every perturbed input and each call's full note, all chunks), and the exact-reuse floor (the
    distinct chunks of each note over all calls, the all-mask chunk once per length). The encoder
    is the cost (``_encode_chunks`` ~92%, the head under 1% of an engine call, profiled), and its
    cost per chunk does not depend on the batch size on a CPU, so the loop's chunks over a path's
    chunks bounds that path's speed-up."""
    from rationale_kit.metrics.faithfulness import cache as cache_mod, chunk_reuse, engine as engine_mod

    docs = docs_all.iloc[:n_pairs].reset_index(drop=True)
    gold = {n: list(gold_all[n][:1]) for n in docs.note_id}
    jobs = workload(model, docs, gold, rng, "notebook")
    dim = int(model.encoder.config.hidden_size)
    encoded = [0]
    seen: dict[str, set] = {}
    mask_id = int(model.tokenizer.mask_id)
    orig_enc, orig_eval = chunk_reuse._encode_chunks, engine_mod._evaluate_chunks

    def zeros(model_, segs, batch_size, device):
        encoded[0] += len(segs)
        return [torch.zeros(len(x), dim) for x in segs]

    def recording(model_, note, rows, *args, **kwargs):
        s = model_.chunk_size
        keys = seen.setdefault(note.note_id, set())
        for j in rows:
            x = note.ids.copy()
            x[j.removed] = mask_id
            keys.update(x[a: a + s].tobytes() for a in range(0, note.n, s))
        return orig_eval(model_, note, rows, *args, **kwargs)

    chunk_reuse._encode_chunks = cache_mod._encode_chunks = zeros
    engine_mod._evaluate_chunks = recording
    try:
        cache = NoteCache()
        kw = dict(code_set="gold", gold=gold, progress=False, seed=0, device="cpu")
        for fn, _, table, args in jobs:
            fn(model, docs, table, batch_size=BATCH, incremental=True, cache=cache, **args, **kw)
    finally:
        chunk_reuse._encode_chunks = cache_mod._encode_chunks = orig_enc
        engine_mod._evaluate_chunks = orig_eval
    s = model.chunk_size
    notes = {nid: n for (nid, unit), (_, n) in cache._notes.items() if unit == "token"}
    note_chunks = {nid: -(-len(n.ids) // s) for nid, n in notes.items()}
    own = {nid: {n.ids[a: a + s].tobytes() for a in range(0, len(n.ids), s)} for nid, n in notes.items()}
    all_mask = set().union(*seen.values()) if seen else set()
    all_mask = {k for k in all_mask if (np.frombuffer(k, dtype=np.int64) == mask_id).all()}
    floor = sum(len((seen.get(nid, set()) | own[nid]) - all_mask) for nid in own) + len(all_mask)
    loop = cache.chunk_stats["lookups"] + len(jobs) * sum(note_chunks.values())
    return {"pairs": len(docs), "rows_chunks": cache.chunk_stats["lookups"], "engine": encoded[0],
            "loop": loop, "floor": floor, "hit_rate": 1 - cache.chunk_stats["encoded"] / max(1, cache.chunk_stats["lookups"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=70.0, help="CPU seconds for the measured part of the run (approx.)")
    ap.add_argument("--fallback", action="store_true", help="use the fallback models even if rationale_kit.models exists")
    ap.add_argument("--big-labels", type=int, default=2000,
                    help="also run CAML with this many labels (MIMIC-IV ICD-10 has ~7,900); 0 = skip")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the models run (default cpu); cuda times wall seconds with synchronisation")
    ap.add_argument("--models", default="caml,laat,plm_icd",
                    help="comma-separated project models to run (default caml,laat,plm_icd)")
    ap.add_argument("--shape", default="notebook", choices=sorted(ROWS_PER_PAIR),
                    help="workload: 'notebook' (what notebook 05 runs per model, default) or 'single' "
                         "(one scored and one discrete source)")
    ap.add_argument("--pairs", type=int, default=0,
                    help="(note, code) pairs per model (default 0: sized from --budget)")
    ap.add_argument("--codes-per-note", type=int, default=1, choices=[1, 2, 3],
                    help="gold codes scored per note (default 1: pairs spread over as many notes as possible)")
    ap.add_argument("--plm-chunks", default="2,8",
                    help="PLM-ICD max_chunks values to run (default 2 = the default profile, 8 = 1,024 tokens)")
    ap.add_argument("--plm-count-pairs", type=int, default=None,
                    help="PLM-ICD: also count the chunks the engine, the loop and a perfect store encode on this many "
                         "(note, code) pairs of the notebook workload, without running the encoder (default: the "
                         "default profile's faithfulness.max_pairs; 0 = skip)")
    args = ap.parse_args(argv)
    t_all = time.perf_counter()  # the budget covers the whole run
    names = tuple(n.strip() for n in args.models.split(",") if n.strip())
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    labels = [f"C{i:02d}" for i in range(N_LABELS)]
    texts, vocab = make_corpus(60, rng)
    docs = pd.DataFrame({"note_id": [f"n{i}" for i in range(len(texts))], "text": texts,
                         "codes": [list(rng.choice(labels, 3, replace=False)) for _ in texts], "split": "test"})
    gold = dict(zip(docs.note_id, docs.codes))
    source = None
    models = None
    if not args.fallback:
        try:
            plm_chunks = tuple(int(n) for n in args.plm_chunks.split(",") if n.strip())
            models, source = project_models(texts, vocab, labels, names, plm_chunks)
        except Exception as exc:  # noqa: BLE001
            reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"rationale_kit.models not usable here ({reason}); using the fallback models")
    if models is None:
        models, source = fallback_models(vocab, labels, names)
    if args.big_labels:
        big = labels + [f"X{i:05d}" for i in range(args.big_labels - len(labels))]
        big_names = tuple(n for n in ("caml", "laat") if n in names) or ("caml",)
        try:
            extra, _ = (fallback_models(vocab, big, big_names) if "cnn_fallback" in models
                        else project_models(texts, vocab, big, big_names))
            models.update({f"{k}@{args.big_labels}labels": v for k, v in extra.items()})
        except Exception as exc:  # noqa: BLE001
            print(f"no large-label run: {exc}")
    for model in models.values():
        model.to(args.device)
    print(f"models from: {source}")
    clock = "process CPU seconds" if args.device == "cpu" else f"wall seconds on {torch.cuda.get_device_name()}"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, batch {BATCH}, "
          f"times = {clock}, best of 2 round-robin repetitions, "
          f"workload '{args.shape}' ({ROWS_PER_PAIR[args.shape]} perturbed inputs per (note, code); "
          f"see workload()), <= 3 gold codes per note, mask perturbation")
    results = []
    per_model = args.budget / len(models)
    t_setup, t_measured = time.perf_counter() - t_all, time.process_time()
    for name, model in models.items():
        try:
            r = bench_model(name, model, docs, gold, per_model, rng, device=args.device, shape=args.shape,
                            pairs=args.pairs or None, codes_per_note=args.codes_per_note)
        except Exception:  # noqa: BLE001
            print(f"[{name}] failed:\n{traceback.format_exc()}")
            continue
        results.append(r)
        print(f"\n[{name}] {r['labels']} labels, {r['notes']} notes, {r['pairs']} (pair, source), "
              f"mean length {r['mean_len']:.0f} units")
        print(f"  (a) engine {r['engine_rows_per_s']:.1f} rows/s ({r['engine_rows']} rows in "
              f"{r['engine_calls']} forward calls) | plain forward {r['plain_rows_per_s']:.1f} rows/s "
              f"(all labels), {r['plain_same_labels_rows_per_s']:.1f} rows/s (same label_idx)")
        print(f"      ratio engine/plain = {r['ratio_vs_plain']:.2f} (all labels), "
              f"{r['ratio_vs_plain_same_labels']:.2f} (same labels)   [aim >= 0.8]")
        print(f"  (b) loop {r['loop_s']:.2f} {'CPU' if args.device == 'cpu' else 'wall'} s ({r['loop_calls']} forward calls) vs engine {r['engine_s']:.2f} CPU s: "
              f"speed-up {r['speedup_vs_loop']:.1f}x "
              f"[aim >= 10x]; max |engine - loop| = {r['max_abs_diff']:.2e} "
              f"({'agree' if r['agree'] else 'DISAGREE'} at {r['tolerance']:g})")
        print(f"  incremental=True: (a) {r['incr_rows_per_s']:.1f} rows/s ({r['incr_calls']} forward calls), "
              f"ratio engine/plain = {r['incr_ratio_vs_plain']:.2f} (all labels), "
              f"{r['incr_ratio_vs_plain_same_labels']:.2f} (same labels)")
        if r["chunks_loop"]:
            print(f"      chunks encoded: {r['chunks_engine']} by the engine, {r['chunks_loop']} by the loop "
                  f"({r['chunks_loop'] / max(1, r['chunks_engine']):.1f}x fewer)")
        c = r["ceilings"]
        print(f"      exact-reuse ceilings on this workload: {c['distinct_share']:.0%} of the "
              f"{c['rows']} perturbed inputs are distinct" +
              (f"; a prefix/suffix store leaves {c['recurrent_steps_share']:.0%} of the recurrence steps"
               if "recurrent_steps_share" in c else "") +
              (f"; the loop encodes {c['chunks_loop_per_distinct']:.2f}x the distinct chunks"
               if "chunks_loop_per_distinct" in c else ""))
        if r["steps_computed_share"] is not None:
            path_us, lstm_us = lstm_step_costs(model)
            floor = r["steps_computed"] * path_us * 1e-6
            print(f"      the state reuse path computed {r['steps_computed_share']:.0%} of its rows' recurrence steps "
                  f"({r['steps_computed']:,} row-steps); a step costs {path_us:.2f} CPU us per row there and "
                  f"{lstm_us:.2f} in the model's nn.LSTM (oneDNN; 2,048 rows x 32 steps): those steps alone take "
                  f"{floor:.2f} s of the path's {r['incr_s']:.2f} s, so its speed-up over the loop stays below "
                  f"{r['loop_s'] / floor:.1f}x however little the rest costs")
        print(f"      (b) {r['incr_s']:.2f} s: speed-up {r['incr_speedup_vs_loop']:.1f}x over the loop; "
              f"max |engine - loop| = {r['incr_max_abs_diff']:.2e} "
              f"({'agree' if r['incr_agree'] else 'DISAGREE'} at {r['tolerance']:g})")
    count_pairs = args.plm_count_pairs
    if count_pairs is None:
        from rationale_kit.core.config import load_profile
        count_pairs = load_profile("default").faithfulness.max_pairs
    for name, model in models.items():
        if not count_pairs or not name.startswith("plm_icd") or args.device != "cpu":
            continue
        t0 = time.process_time()
        c = plm_chunk_counts(model, docs, gold, np.random.default_rng(1), count_pairs)
        print(f"\n[{name}] notebook 05's workload, {c['pairs']} (note, code) pairs, chunks counted without encoding "
              f"({time.process_time() - t0:.0f} CPU s): loop {c['loop']}, engine {c['engine']} "
              f"({c['loop'] / max(1, c['engine']):.2f}x fewer; chunk hit rate {c['hit_rate']:.0%} of "
              f"{c['rows_chunks']} look-ups), perfect store {c['floor']} ({c['loop'] / max(1, c['floor']):.2f}x fewer): "
              f"the speed-up bound of exact chunk reuse at an equal cost per chunk")
    wall = time.perf_counter() - t_all
    print(f"measured part {time.process_time() - t_measured:.0f} CPU s (set-up before it: {t_setup:.0f} s wall)")
    print(f"\ntotal {wall:.0f} s wall for a budget of {args.budget:.0f} CPU s "
          f"({'within' if wall <= args.budget * 1.25 else 'OVER'} it; wall time also counts other jobs on the cores)")
    if results:
        summary = pd.DataFrame(results).set_index("model")[
            ["ratio_vs_plain", "ratio_vs_plain_same_labels", "speedup_vs_loop", "max_abs_diff",
             "incr_ratio_vs_plain", "incr_speedup_vs_loop", "incr_max_abs_diff"]
        ]
        print(summary.to_string(float_format=lambda x: f"{x:.3g}"))
    return results


if __name__ == "__main__":
    main()
