"""One-shot check and measurement of the GPU path; the device command is tools/gpu_check.sh.

Steps, each guarded (a failure prints its traceback, the next step runs; the JSON is rewritten after
every step): ``env`` (device, versions, memory); ``corpus`` (the embedded corpus at the default
profile's sizes); ``train_<model>``: CAML and LAAT at the mimic profile's (Edin et al.) sizes and
PLM-ICD on the real MiniLM (``--encoder``, 8 chunks = 1,024 word pieces), trained by
``training.train_model`` with ``train.amp: true`` for 2-3 epochs (docs/s, units/s, epoch seconds,
peak memory, val/test micro-F1, finite loss), then the same training step with AMP and in fp32 side
by side, and the output dtypes under autocast (label attention and logits must stay float32);
``eval_<model>``: ``training.predict_probs`` docs/s at batch 1, 8, 32 (fp32 and AMP) and
``models.load_predictor`` on the device; ``mimic_estimate``: training steps at the mimic profile's
sizes (7,900 labels, 4,000 words / 4,096 pieces, its batch sizes) on random inputs, extrapolated to
an epoch of MIMIC-IV ICD-10 (PLM-ICD with MiniLM and with a random RoBERTa-base-sized encoder, the
size of mimic.yaml's RoBERTa-base-PM-M3-Voc); ``faithfulness``: ``benchmarks/faithfulness.py``'s
``bench_model`` on the device with the trained models, sized to the time left (so it runs last).

    bash tools/gpu_check.sh                                                   # GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIMIC = {"train": 110_000, "val": 16_000, "test": 19_000, "labels": 7_900, "codes_per_doc": 16}
SIZES = {  # run sizes: "full" on a GPU, "tiny" to test this script on a CPU in seconds
    "full": dict(
        corpus=dict(n_train=800, n_val=150, n_test=200, n_fewshot_pool=150, n_codes=60, min_words=200, max_words=3200),
        caml=dict(embed_dim=100, filters=50, kernel=10, dropout=0.2, lr=0.005, batch_size=8, epochs=3),
        laat=dict(embed_dim=100, hidden=512, projection=512, dropout=0.3, lr=0.001, batch_size=8, epochs=2),
        plm_icd=dict(chunk_size=128, max_chunks=8, projection=512, lr=0.0001, weight_decay=0.0, batch_size=8,
                     grad_accum=1, epochs=2, max_train_docs=None),
        word2vec=dict(dim=100, epochs=5, min_count=2), amp_batches=8, eval_docs=256, faith_budget=25.0,
        faith_docs=60, mimic=dict(labels=MIMIC["labels"], vocab=150_000, words=(1500, 4000), chunks=(16, 32),
                                  roberta=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                               intermediate_size=3072, vocab_size=50_265), steps=5)),
    "tiny": dict(
        corpus=dict(n_train=40, n_val=12, n_test=12, n_fewshot_pool=5, n_codes=12, min_words=100, max_words=300),
        caml=dict(embed_dim=32, filters=16, kernel=5, batch_size=8, epochs=1),
        laat=dict(embed_dim=32, hidden=16, projection=16, batch_size=8, epochs=1),
        plm_icd=dict(chunk_size=64, max_chunks=2, projection=16, batch_size=4, epochs=1, max_train_docs=12),
        word2vec=dict(dim=32, epochs=1, min_count=1), amp_batches=3, eval_docs=8, faith_budget=1.0,
        faith_docs=4, mimic=dict(labels=300, vocab=3000, words=(150, 300), chunks=(1, 2),
                                 roberta=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=128, vocab_size=1000), steps=1)),
}
RESULT: dict = {"steps": {}, "errors": {}}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gb(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None


def gensim_ok() -> bool:
    """word2vec needs gensim (a compiled package shipped as a wheel to the GPU machine)."""
    try:
        import gensim.models  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken: CAML/LAAT then start from random embeddings
        return False
    return True


def amp_dtype_for(dev: torch.device) -> torch.dtype:
    """The training code's autocast dtype on CUDA; bf16 on CPU (only to exercise the code path)."""
    from rationale_kit.training import amp_dtype

    return amp_dtype(dev) or torch.bfloat16


def save(out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(RESULT, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


@contextlib.contextmanager
def step(name: str, out: Path | None):
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except Exception:  # noqa: BLE001 - one step's failure must not stop the others
        tb = traceback.format_exc()
        print(f"[{name}] FAILED:\n{tb}", flush=True)
        RESULT["errors"][name] = tb
    finally:
        RESULT["steps"][name] = round(time.perf_counter() - t0, 1)
        save(out)


def time_steps(model, batches, dev, amp_dtype, warm: int = 2) -> tuple[float, float | None, float]:
    """Seconds per training step (autocast forward, BCE, backward, AdamW) over ``batches[warm:]``
    (tuples ``ids, mask, y`` on ``dev``) after ``warm`` warm-up steps; peak GPU GiB; last loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and dev.type == "cuda" else None

    def one(ids, mask, y):
        with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            out = model(ids, mask)
        loss = F.binary_cross_entropy_with_logits(out.logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for b in batches[:warm]:
        one(*b)
    sync(dev)
    reset_peak(dev)
    t0 = time.perf_counter()
    for b in batches[warm:]:
        loss = one(*b)
    sync(dev)
    return (time.perf_counter() - t0) / max(1, len(batches) - warm), peak_gb(dev), float(loss)


def env_info(dev: torch.device) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "numpy": np.__version__, "device": str(dev),
            "gensim": gensim_ok()}
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        info.update(name=torch.cuda.get_device_name(dev), capability=torch.cuda.get_device_capability(dev),
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(),
                    mem_total_gb=round(total / 2**30, 1), mem_free_gb=round(free / 2**30, 1),
                    device_count=torch.cuda.device_count())
    return info


def make_profile(sz: dict, encoder: str):
    from rationale_kit.core.config import PARAMS_BY_MODEL, load_profile

    # every model parameter set here (each family's defaults + SIZES): edits of default.yaml do not leak in
    base = {k: dataclasses.asdict(cls()) for k, cls in PARAMS_BY_MODEL.items()}
    train = {k: {**base[k], **sz[k]} for k in ("caml", "laat")}
    train["plm_icd"] = {**base["plm_icd"], **sz["plm_icd"], "encoder_path": encoder}
    train["word2vec"] = sz["word2vec"]
    return load_profile("default", overrides={"common": {"progress": False},
                                               "data": {"embedded": sz["corpus"]},
                                               "train": {**train, "amp": True}})


def train_one(name, prof, docs, labels, dev, work: Path):
    from rationale_kit import models, training
    from rationale_kit.metrics.coding import coding_report, label_matrix

    params = getattr(prof.train, name)
    torch.manual_seed(prof.common.seed)
    train = docs[docs.split == "train"]
    if params.max_train_docs:
        train = train.head(params.max_train_docs)
    w2v = None
    if name != "plm_icd" and gensim_ok():
        w2v = dataclasses.replace(prof.train.word2vec, dim=params.embed_dim)
    t0 = time.perf_counter()
    model = models.build_model(name, params, labels, train_texts=train.text, w2v=w2v,
                               max_words=prof.data.max_words, seed=prof.common.seed)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    model.float()  # the fp16 MiniLM copy must train in float32 (it loads so; this makes sure)
    build_s = time.perf_counter() - t0
    reset_peak(dev)
    res = training.train_model(model, train, docs[docs.split == "val"], params, prof.train, work / name,
                               device=dev.type, progress=False, seed=prof.common.seed)
    peak = peak_gb(dev)
    test = docs[docs.split == "test"]
    probs = training.predict_probs(res.model, test, batch_size=16, device=dev.type, amp=True)
    test_rep = coding_report(label_matrix(test.codes, labels), probs, res.threshold)
    tm, hist = res.timing, res.history
    loop = tm["loop_seconds"]
    row = {"params": dataclasses.asdict(params), "word2vec": w2v is not None, "param_dtypes_loaded": dtypes,
           "build_s": round(build_s, 1), "train_docs": len(train), "epochs": len(hist),
           "epoch_s": [round(x, 1) for x in hist.seconds], **{k: round(tm[k], 2) for k in tm},
           "docs_per_s": round(tm["docs"] / loop, 1), "units_per_s": round(tm["units"] / loop),
           "peak_gb": peak, "train_loss": [round(x, 4) for x in hist.train_loss],
           "loss_finite": bool(np.isfinite(hist.train_loss).all()), "threshold": res.threshold,
           "val_micro_f1": round(res.val_metrics["micro_f1"], 4), "val_map": round(res.val_metrics["map"], 4),
           "test_micro_f1": round(test_rep["micro_f1"], 4)}
    print(f"{name}: {row['epochs']} epochs {row['epoch_s']} s, {row['docs_per_s']} docs/s, "
          f"{row['units_per_s']} units/s, peak {peak} GiB, loss {row['train_loss']}, "
          f"val/test micro-F1 {row['val_micro_f1']}/{row['test_micro_f1']}", flush=True)
    return res, row


def amp_compare(model, docs, labels, batch_size, n_batches, dev) -> dict:
    """The same training batches with AMP and in fp32, alternating twice; best of each."""
    from rationale_kit.metrics.coding import label_matrix
    from rationale_kit.training import make_batches

    train = docs[docs.split == "train"].head(batch_size * n_batches)
    enc = [model.tokenizer.encode(t) for t in train.text]
    y = label_matrix(train.codes, labels).astype(np.float32)
    order = make_batches([len(e) for e in enc], batch_size, np.random.default_rng(0))
    batches = [(*(x.to(dev) for x in model.collate([enc[i] for i in b])), torch.from_numpy(y[b]).to(dev))
               for b in order]
    dt = amp_dtype_for(dev)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best: dict = {}
    try:
        for _ in range(2):
            for mode, d in (("amp", dt), ("fp32", None)):
                s, peak, _ = time_steps(model, batches, dev, d)
                if mode not in best or s < best[mode][0]:
                    best[mode] = (s, peak)
    finally:
        model.load_state_dict(saved)
        model.eval()
    docs_per_step = len(train) / len(batches)
    out = {"amp_dtype": str(dt), "batches": len(batches) - 2,
           "amp_s_per_step": round(best["amp"][0], 4), "fp32_s_per_step": round(best["fp32"][0], 4),
           "amp_docs_per_s": round(docs_per_step / best["amp"][0], 1),
           "fp32_docs_per_s": round(docs_per_step / best["fp32"][0], 1),
           "amp_speedup": round(best["fp32"][0] / best["amp"][0], 2),
           "amp_peak_gb": best["amp"][1], "fp32_peak_gb": best["fp32"][1]}
    print(f"  AMP ({dt}) {out['amp_docs_per_s']} vs fp32 {out['fp32_docs_per_s']} docs/s: "
          f"speed-up {out['amp_speedup']}x", flush=True)
    return out


def dtype_check(model, texts, dev) -> dict:
    """Under autocast: the encoder output may be low precision, attention and logits must be fp32."""
    enc = [model.tokenizer.encode(t) for t in texts[:4]]
    ids, mask = (x.to(dev) for x in model.collate(enc))
    dt = amp_dtype_for(dev)
    model.eval()
    with torch.no_grad():
        ref = model(ids, mask)
        with torch.autocast(dev.type, dtype=dt):
            out = model(ids, mask)
            h = model.hidden(model.embed(ids), mask)
    row_err = float((out.attention.sum(-1) - 1).abs().max())
    diff = float((torch.sigmoid(out.logits.float()) - torch.sigmoid(ref.logits)).abs().max())
    ok = out.attention.dtype == torch.float32 and out.logits.dtype == torch.float32
    res = {"autocast": str(dt), "hidden": str(h.dtype), "attention": str(out.attention.dtype),
           "logits": str(out.logits.dtype), "label_attention_float32": ok,
           "attention_row_sum_max_err": row_err, "max_prob_diff_amp_vs_fp32": diff}
    print(f"  under autocast {dt}: hidden {h.dtype}, attention {out.attention.dtype}, logits "
          f"{out.logits.dtype} -> {'OK' if ok else 'NOT float32'}; max |p_amp - p_fp32| {diff:.2e}", flush=True)
    return res


def eval_throughput(name, res, texts, dev) -> dict:
    from rationale_kit import models
    from rationale_kit.training import predict_probs

    model = res.model
    t0 = time.perf_counter()
    for t in texts:
        model.tokenizer.encode(t)
    out = {"docs": len(texts), "encode_docs_per_s": round(len(texts) / (time.perf_counter() - t0), 1)}
    predict_probs(model, texts[:4], batch_size=4, device=dev.type, amp=True)  # warm-up
    for amp in (False, True):
        for bs in (1, 8, 32):
            sync(dev)
            t0 = time.perf_counter()
            predict_probs(model, texts, batch_size=bs, device=dev.type, amp=amp)
            sync(dev)
            out[f"{'amp' if amp else 'fp32'}_bs{bs}_docs_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    pred = models.load_predictor(res.out_dir / "model", device=dev.type, batch_size=8).predict(texts[:2], top_k=3)
    out["predictor_ok"] = all({"codes", "probs", "attention"} <= set(p) for p in pred)
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
    return out


def mimic_estimate(sz: dict, encoder: str, dev: torch.device) -> dict:
    """One training step at the mimic profile's sizes on random inputs, extrapolated to an epoch."""
    import transformers

    from rationale_kit import models
    from rationale_kit.core.config import load_profile

    m = sz["mimic"]
    prof = load_profile("mimic")
    labels = [f"L{i:05d}" for i in range(m["labels"])]
    words = models.WordTokenizer(list(models.SPECIALS) + [f"w{i}" for i in range(m["vocab"])], max_words=4000)
    dt = amp_dtype_for(dev) if prof.train.amp else None
    g = torch.Generator().manual_seed(0)

    laat = prof.train.laat if m["vocab"] > 10_000 else dataclasses.replace(prof.train.laat, hidden=16, projection=16)
    p = prof.train.plm_icd
    tok = models.PieceTokenizer(models.load_hf_tokenizer(encoder), p.chunk_size * p.max_chunks, 4000)
    cfg = transformers.RobertaConfig(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, **m["roberta"])
    pieces = tuple(c * p.chunk_size for c in m["chunks"])
    builders = [  # name, params, (mean, cap) length, model factory
        ("caml", prof.train.caml, m["words"], lambda: models.CAML(labels, words, prof.train.caml, 4000)),
        ("laat", laat, m["words"], lambda: models.LAAT(labels, words, laat, 4000)),
        ("plm_icd[MiniLM-L6]", p, pieces, lambda: models.PLMICD(labels, tok, p, models.load_encoder(encoder), 4000)),
        ("plm_icd[RoBERTa-base size, random init]", p, pieces, lambda: models.PLMICD(
            labels, tok, p, transformers.AutoModel.from_config(cfg, add_pooling_layer=False), 4000)),
    ]

    out = {"assumptions": {**MIMIC, "labels": m["labels"], "vocab": m["vocab"], "amp": str(dt),
                           "lengths": "mean ~1,500 words (CAML/LAAT) / 16 chunks = 2,048 word pieces (PLM-ICD), "
                                      "cap 4,000 words / 4,096 pieces; epoch = train steps at the mean length "
                                      "+ validation forward passes (batch 2x) at the mean length"}}
    for name, params, lengths, build in builders:
        try:
            torch.manual_seed(0)
            model = build().float().to(dev)
            vocab = int(model.encoder.config.vocab_size) if hasattr(model, "encoder") else words.vocab_size
            bs = params.batch_size
            y = torch.zeros(bs, m["labels"])
            y[:, : MIMIC["codes_per_doc"]] = 1.0
            row = {"batch_size": bs, "grad_accum": params.grad_accum,
                   "params_m": round(sum(x.numel() for x in model.parameters()) / 1e6, 1)}
            for tag, t in zip(("mean", "cap"), lengths):
                ids = torch.randint(4, vocab, (bs, t), generator=g).to(dev)
                mask = torch.ones_like(ids, dtype=torch.bool)
                warm = 2 if m["steps"] > 1 else 1
                s, peak, loss = time_steps(model, [(ids, mask, y.to(dev))] * (m["steps"] + warm), dev, dt, warm)
                row.update({f"{tag}_len": t, f"{tag}_s_per_step": round(s, 4), f"{tag}_peak_gb": peak,
                            f"{tag}_loss_finite": math.isfinite(loss)})
            model.eval()
            ids = torch.randint(4, vocab, (2 * bs, lengths[0]), generator=g).to(dev)
            with torch.no_grad(), torch.autocast(dev.type, dtype=dt) if dt else contextlib.nullcontext():
                model(ids)
                sync(dev)
                t0 = time.perf_counter()
                for _ in range(m["steps"]):
                    model(ids)
                sync(dev)
            row["eval_s_per_batch"] = round((time.perf_counter() - t0) / m["steps"], 4)
            train_steps, val_batches = math.ceil(MIMIC["train"] / bs), math.ceil(MIMIC["val"] / (2 * bs))
            epoch_s = train_steps * row["mean_s_per_step"] + val_batches * row["eval_s_per_batch"]
            row.update(epoch_min=round(epoch_s / 60, 1), epochs_cfg=params.epochs,
                       all_epochs_h=round(epoch_s * params.epochs / 3600, 1))
            out[name] = row
            print(f"{name}: {row['mean_s_per_step']} s/step at {lengths[0]}, {row['cap_s_per_step']} s/step at "
                  f"{lengths[1]} (peak {row['cap_peak_gb']} GiB) -> ~{row['epoch_min']} min/epoch, "
                  f"~{row['all_epochs_h']} h for {params.epochs} epochs", flush=True)
            del model
        except Exception:  # noqa: BLE001
            out[name] = {"error": traceback.format_exc()}
            print(f"{name} FAILED:\n{out[name]['error']}", flush=True)
        reset_peak(dev)
    return out


def faithfulness(trained: dict, docs, dev: torch.device, budget: float, n_docs: int, big_labels: int) -> dict:
    spec = importlib.util.spec_from_file_location("bench_faithfulness", ROOT / "benchmarks" / "faithfulness.py")
    fb = sys.modules["bench_faithfulness"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fb)
    from rationale_kit import models

    test = docs[docs.split == "test"]
    out = {"budget_s_per_model": round(budget, 1)}
    todo = dict(trained)
    if big_labels:  # CAML untrained with a MIMIC-like label count: reading only the needed labels matters
        caml = trained.get("caml")
        if caml is not None:
            extra = caml.labels + [f"X{i:05d}" for i in range(big_labels - len(caml.labels))]
            torch.manual_seed(0)
            todo[f"caml@{big_labels}labels"] = models.build_model(
                "caml", caml.params, extra, train_texts=docs[docs.split == "train"].text).to(dev)
    for name, model in todo.items():
        known = set(model.labels)
        gold = {n: [c for c in cs if c in known] for n, cs in zip(test.note_id, test.codes)}
        sel = test[[len(gold[n]) > 0 for n in test.note_id]].head(n_docs).reset_index(drop=True)
        try:
            r = fb.bench_model(name, model, sel, gold, budget, np.random.default_rng(0), device=dev.type)
            out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            print(f"{name}: engine {r['engine_rows_per_s']:.0f} rows/s vs plain {r['plain_rows_per_s']:.0f} "
                  f"(ratio {r['ratio_vs_plain']:.2f}, same labels {r['ratio_vs_plain_same_labels']:.2f}); "
                  f"speed-up vs loop {r['speedup_vs_loop']:.1f}x; max diff {r['max_abs_diff']:.1e} "
                  f"({'agree' if r['agree'] else 'DISAGREE'} at {r['tolerance']:g})", flush=True)
            print(f"{name}: incremental=True {r['incr_rows_per_s']:.0f} rows/s (ratio {r['incr_ratio_vs_plain']:.2f}); "
                  f"speed-up vs loop {r['incr_speedup_vs_loop']:.1f}x; max diff {r['incr_max_abs_diff']:.1e} "
                  f"({'agree' if r['incr_agree'] else 'DISAGREE'}); chunks encoded {r['chunks_engine']} vs "
                  f"{r['chunks_loop']} by the loop", flush=True)
        except Exception:  # noqa: BLE001
            out[name] = {"error": traceback.format_exc()}
            print(f"{name} FAILED:\n{out[name]['error']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (test this script on a CPU)")
    ap.add_argument("--encoder", default=str(ROOT / ".gpu" / "minilm"),
                    help="PLM-ICD encoder folder (default .gpu/minilm, the fp16 copy of the bundled MiniLM)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds for the whole run: the faithfulness step gets what is left (default 420, tiny 900)")
    ap.add_argument("--work", default=None, help="folder for the trained models (default: a temporary one)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    limit = args.time_limit or (900.0 if args.tiny else 420.0)
    sz = SIZES["tiny" if args.tiny else "full"]
    dev = torch.device(args.device)
    if dev.type == "cpu":  # one thread: shared CPU cores make multi-threaded small LSTMs crawl
        torch.set_num_threads(1)
    if not Path(args.encoder).exists():
        from rationale_kit.models import bundled_encoder_path

        print(f"{args.encoder} not found: using the bundled encoder")
        args.encoder = str(bundled_encoder_path())
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    RESULT.update(args={k: str(v) for k, v in vars(args).items()}, sizes=sz)
    trained, results, docs, labels, prof = {}, {}, None, None, None

    with step("env", args.out):
        RESULT["env"] = env_info(dev)
        print(json.dumps(RESULT["env"], default=str))
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")

    with step("corpus", args.out):
        from rationale_kit import data
        from rationale_kit.workbook import steps

        prof = make_profile(sz, args.encoder)
        t0 = time.perf_counter()
        docs = data.load_dataset(prof).docs
        labels = steps.label_space(docs)
        RESULT["corpus"] = {"seconds": round(time.perf_counter() - t0, 1), "labels": len(labels),
                            "docs": {s: int((docs.split == s).sum()) for s in ("train", "val", "test")},
                            "mean_words": round(float(docs.text.str.split().str.len().mean()))}
        print(RESULT["corpus"])

    RESULT["train"] = {}
    for name in ("caml", "laat", "plm_icd"):
        with step(f"train_{name}", args.out):
            res, row = train_one(name, prof, docs, labels, dev, work)
            trained[name], results[name] = res.model, res
            RESULT["train"][name] = row
            row["amp_vs_fp32"] = amp_compare(res.model, docs, labels, getattr(prof.train, name).batch_size,
                                             sz["amp_batches"], dev)
            row["autocast_dtypes"] = dtype_check(res.model, list(docs[docs.split == "val"].text), dev)

    RESULT["eval"] = {}
    for name, res in results.items():
        with step(f"eval_{name}", args.out):
            texts = list(docs[docs.split.isin(["val", "test"])].text)[: sz["eval_docs"]]
            RESULT["eval"][name] = eval_throughput(name, res, texts, dev)

    with step("mimic_estimate", args.out):
        RESULT["mimic_estimate"] = mimic_estimate(sz, args.encoder, dev)

    with step("faithfulness", args.out):
        left = limit - (time.perf_counter() - t_start) - 15
        n_models = len(trained) + 1
        budget = min(sz["faith_budget"], left / n_models / 1.3)
        if budget < (0.5 if args.tiny else 5):
            raise RuntimeError(f"skipped: {left:.0f} s left of --time-limit {limit:.0f}")
        RESULT["faithfulness"] = faithfulness(trained, docs, dev, budget, sz["faith_docs"],
                                              0 if not trained else sz["mimic"]["labels"])

    RESULT["total_s"] = round(time.perf_counter() - t_start, 1)
    save(args.out)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n=== done in {RESULT['total_s']} s; step seconds {RESULT['steps']}; "
          f"failed: {sorted(RESULT['errors']) or 'none'}")
    return 1 if RESULT["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
