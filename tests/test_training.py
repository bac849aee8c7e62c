import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dataclasses

from rationale_kit.core.config import PLMICDParams, Train, Word2Vec
from test_models import WordParams, word_params
from rationale_kit.models import build_model, load_predictor
from rationale_kit.training import HISTORY_COLUMNS, NonFiniteLoss, attention_rationale_loss, make_batches, predict_probs, teacher_units, train_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

KEYS = {"J18.9": "pneumonia", "E11.9": "diabetes", "S72.0": "fracture"}
FILLER = [f"w{i}" for i in range(40)]
PARAMS = WordParams(embed_dim=12, filters=8, kernel=3, hidden=6, projection=6, dropout=0.2, lr=5e-2,
                    weight_decay=0.0, batch_size=8, epochs=4, patience=4)
W2V = Word2Vec(dim=12, window=3, min_count=1, epochs=1)
CFG = Train(warmup_ratio=0.1, clip_norm=1.0, amp=True, threshold_grid=101)


def _corpus(n: int, offset: int, seed: int) -> pd.DataFrame:
    """Notes of filler words; each code's keyword is inserted when the note has the code."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        codes = [c for c in KEYS if rng.random() < 0.4]
        words = list(rng.choice(FILLER, size=int(rng.integers(15, 30))))
        for c in codes:
            words.insert(int(rng.integers(0, len(words) + 1)), KEYS[c])
        rows.append({"note_id": f"n{offset + i}", "text": " ".join(words), "codes": codes})
    return pd.DataFrame(rows)


TRAIN = _corpus(48, 0, 1)
VAL = _corpus(16, 1000, 2)


def _model(name="caml", params=PARAMS, seed=0):
    torch.manual_seed(seed)
    return build_model(name, word_params(name, params), list(KEYS), TRAIN["text"], W2V)


def _train(out_dir, model=None, **kw):
    kw.setdefault("progress", False)
    return train_model(model if model is not None else _model(), TRAIN, VAL, kw.pop("params", PARAMS), CFG,
                       out_dir, **kw)


def _core(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns="seconds")


def test_training_learns_and_saves(tmp_path):
    res = _train(tmp_path, epochs=8)
    h = res.history
    assert list(h.columns) == HISTORY_COLUMNS and h["epoch"].tolist() == list(range(1, 9))
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["val_map"].max() > 0.9
    assert res.best_epoch == int(h["val_map"].idxmax()) + 1
    assert 0 <= res.threshold <= 1 and res.model.threshold == res.threshold
    assert res.val_metrics["micro_f1"] > 0.8 and res.val_metrics["threshold"] == res.threshold
    assert h["rationale_loss"].isna().all()
    assert res.timing["steps"] == 8 * 6 and res.timing["compute_seconds"] <= res.timing["loop_seconds"]
    # the saved model carries the threshold and reproduces the best model's predictions
    pred = load_predictor(tmp_path / "model")
    assert pred.threshold == pytest.approx(res.threshold)
    probs = predict_probs(res.model, VAL, batch_size=4)
    assert probs.shape == (len(VAL), 3)
    got = np.array([[r["probs"][c] for c in KEYS] for r in pred.predict(list(VAL["text"]))])
    np.testing.assert_allclose(got, probs, atol=1e-6)
    assert (tmp_path / "history.csv").exists() and (tmp_path / "checkpoint.pt").exists()


def test_two_runs_same_seed_identical(tmp_path):
    a = _train(tmp_path / "a", epochs=2, seed=5)
    b = _train(tmp_path / "b", epochs=2, seed=5)
    pd.testing.assert_frame_equal(_core(a.history), _core(b.history))
    assert a.threshold == b.threshold and a.val_metrics == b.val_metrics
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = _train(tmp_path / "full", epochs=4, seed=3)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_3(info):
        if info["event"] == "step" and info["epoch"] == 3 and info["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _train(tmp_path / "cut", epochs=4, seed=3, callback=stop_in_epoch_3)
    partial = pd.read_csv(tmp_path / "cut" / "history.csv")
    assert partial["epoch"].tolist() == [1, 2]
    seen = []
    resumed = _train(tmp_path / "cut", model=_model(seed=99), epochs=4, seed=3,
                     callback=lambda info: seen.append(info["epoch"]))
    assert min(seen) == 3  # epochs 1 and 2 were not repeated
    pd.testing.assert_frame_equal(_core(resumed.history), _core(full.history))
    assert resumed.threshold == full.threshold and resumed.best_epoch == full.best_epoch
    for (k, x), (_, y) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), k
    # finished run: calling again trains nothing and returns the same result
    again = _train(tmp_path / "cut", epochs=4, seed=3, callback=lambda info: seen.append(-1))
    assert -1 not in seen and again.threshold == full.threshold
    # a checkpoint of other settings is not reused: training starts over (and says so)
    fresh = _train(tmp_path / "five", epochs=5, seed=3)
    restarted = _train(tmp_path / "cut", epochs=5, seed=3)
    pd.testing.assert_frame_equal(_core(restarted.history), _core(fresh.history))
    assert (tmp_path / "cut" / "checkpoint.stale.pt").exists()


def test_early_stopping(tmp_path):
    params = dataclasses.replace(PARAMS, lr=0.0, patience=2, epochs=10)
    res = _train(tmp_path, params=params)
    assert len(res.history) == 3 and res.best_epoch == 1  # no improvement with lr 0


def test_nan_loss_stops_with_message(tmp_path):
    model = _model()
    with torch.no_grad():
        model.final.bias[0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1"):
        _train(tmp_path, model=model, epochs=1)


def test_grad_accumulation_and_laat(tmp_path):
    params = dataclasses.replace(PARAMS, batch_size=4, grad_accum=3, lr=1e-2)
    res = _train(tmp_path, model=_model("laat", params), params=params, epochs=2)
    assert len(res.history) == 2 and np.isfinite(res.history["train_loss"]).all()


def test_make_batches_buckets_and_seed():
    lengths = np.arange(100)
    a = make_batches(lengths, 8, np.random.default_rng([1, 1]), bucket_batches=5)
    b = make_batches(lengths, 8, np.random.default_rng([1, 1]), bucket_batches=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    # inside a bucket notes are sorted by length: each batch is a contiguous length range of its pool
    assert all((np.diff(lengths[x]) <= 0).all() for x in a)


# ------------------------------------------------------------------------------------------
# rationale loss
# ------------------------------------------------------------------------------------------
def test_rationale_loss_kl_by_hand():
    att = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])
    tgt = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    # row 0: m = (1/2, 1/2): 1/2 log(0.5/0.5) + 1/2 log(0.5/0.25) = 0.5 log 2; row 1: log(1/0.4)
    expected = (0.5 * math.log(2) + math.log(1 / 0.4)) / 2
    got = attention_rationale_loss(att, tgt, "kl")
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # from log-attention (what training uses) the same
    got2 = attention_rationale_loss(att, tgt, "kl", log_attention=torch.log(att.clamp_min(1e-30)))
    assert float(got2) == pytest.approx(expected, rel=1e-6)
    # bce: r = a n / (1 + a n) vs binary mask, mean over the n valid positions
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])

    def bce(a, y):
        a, y = np.array(a), np.array(y)
        r = a * len(a) / (1 + a * len(a))
        return float(np.mean(-(y * np.log(r) + (1 - y) * np.log(1 - r))))

    expected = (bce([0.5, 0.25, 0.25], [1, 1, 0]) + bce([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1])) / 2
    got3 = attention_rationale_loss(att, tgt, "bce", valid=valid)
    assert float(got3) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        attention_rationale_loss(att, tgt, "mse")


def test_rationale_loss_kl_matches_training_log_attention():
    model = _model()
    model.eval()
    docs = TRAIN.iloc[:4].reset_index(drop=True)
    enc = [model.tokenizer.encode(t) for t in docs["text"]]
    targets = {(docs.note_id[0], c): [(0, 3)] for c in docs.codes[0]}
    pairs = teacher_units(model, docs, enc, targets)
    assert len(pairs[0]) == len(docs.codes[0]) and all(len(p) == 0 for p in pairs[1:])
    if not pairs[0]:
        pytest.skip("first note has no codes")
    ids, mask = model.collate(enc)
    rows = (torch.zeros(len(pairs[0]), dtype=torch.long), torch.tensor([j for j, _ in pairs[0]]))
    with torch.no_grad():
        out = model(ids, mask, with_log_attention=rows)
    att = out.attention[rows]
    tgt = torch.zeros_like(att)
    for p, (_, units) in enumerate(pairs[0]):
        tgt[p, units] = 1
    a = float(attention_rationale_loss(att, tgt, "kl", out.log_attention))
    b = float(attention_rationale_loss(att, tgt, "kl"))
    assert a == pytest.approx(b, rel=1e-5)


def _attention_mass(model, docs, targets):
    enc = [model.tokenizer.encode(t) for t in docs["text"]]
    pairs = teacher_units(model, docs, enc, targets)
    ids, mask = model.collate(enc)
    model.eval()
    with torch.no_grad():
        att = model(ids, mask).attention
    masses = [float(att[i, j, units].sum()) for i, ps in enumerate(pairs) for j, units in ps]
    return float(np.mean(masses))


@pytest.mark.parametrize("kind", ["kl", "bce"])
def test_guided_learning_moves_attention(tmp_path, kind):
    # teacher says: the first word of the note supports every code (not the keyword)
    targets = {}
    for nid, text, codes in zip(TRAIN.note_id, TRAIN.text, TRAIN.codes):
        end = text.index(" ")
        for c in codes:
            targets[(nid, c)] = [(0, end)]
    base = _train(tmp_path / "base", epochs=6, rationale_targets=targets, lam=0.0, rationale_loss=kind)
    guided = _train(tmp_path / "guided", epochs=6, rationale_targets=targets, lam=5.0, rationale_loss=kind)
    assert np.isfinite(base.history["rationale_loss"]).all()  # logged without gradient at lam 0
    assert guided.history["rationale_loss"].iloc[-1] < 0.5 * base.history["rationale_loss"].iloc[-1]
    # the last epoch's weights (the best checkpoint is chosen on val mAP, which these wrong
    # rationales hurt) put much more attention on the teacher's units
    masses = []
    for run in ("base", "guided"):
        model = _model()
        model.load_state_dict(torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"])
        masses.append(_attention_mass(model, TRAIN, targets))
    assert masses[1] > masses[0] + 0.3


# ------------------------------------------------------------------------------------------
# PLM-ICD end to end and data-parallel launch
# ------------------------------------------------------------------------------------------
def test_plm_icd_trains(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(TRAIN["text"]), trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    enc_dir = tmp_path / "enc"
    hf.save_pretrained(enc_dir)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=48, max_position_embeddings=40, pad_token_id=0)).save_pretrained(enc_dir)
    params = PLMICDParams(encoder_path=str(enc_dir), chunk_size=16, max_chunks=3, projection=8, lr=5e-3,
                         weight_decay=0.0, batch_size=8, epochs=2, patience=2)
    torch.manual_seed(0)
    model = build_model("plm_icd", params, list(KEYS))
    res = train_model(model, TRAIN, VAL, params, CFG, tmp_path / "out", progress=False)
    assert len(res.history) == 2 and np.isfinite(res.history["train_loss"]).all()
    pred = load_predictor(tmp_path / "out" / "model")
    np.testing.assert_allclose(
        np.array([[r["probs"][c] for c in KEYS] for r in pred.predict(list(VAL["text"][:4]))]),
        predict_probs(res.model, VAL.iloc[:4]), atol=1e-6,
    )


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, pandas as pd
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_training as T
    res = T._train({out!r}, epochs=2, seed=1)
    rank = int(__import__("os").environ["RANK"])
    print(f"RANK {{rank}} STEPS {{res.timing['steps']}}", flush=True)
    """
)


def test_data_parallel_launch_with_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the two ranks print concurrently, so their lines can interleave: match, don't split
    found = re.findall(r"RANK (\d) STEPS (\d+)", proc.stdout)
    assert sorted(r for r, _ in found) == ["0", "1"], proc.stdout
    # 48 notes / 8 = 6 batches per epoch, 3 per process, 2 epochs
    assert all(steps == "6" for _, steps in found)
    assert (tmp_path / "out" / "model" / "config.json").exists()


# --------------------------------------------------------------------------------------------
# checkpoint keys: every setting that determines the result
# --------------------------------------------------------------------------------------------
def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("change", ["dropout", "text", "key"])
def test_finished_checkpoint_not_reused_when_anything_it_depends_on_changes(tmp_path, capsys, change):
    first = _train(tmp_path, epochs=2, seed=4)
    params, train, key = PARAMS, TRAIN, {"init_from": "aaaa"}
    if change == "dropout":  # not a shape: the old weights used to come back under the new setting
        params = dataclasses.replace(PARAMS, dropout=0.9)
    elif change == "text":  # same ids and codes, other words
        train = TRAIN.assign(text=TRAIN.text.str.replace("w1", "w2", regex=False))
    trained = []
    res = train_model(_model(params=params), train, VAL, params, CFG, tmp_path, epochs=2, seed=4,
                      progress=True, key=key if change == "key" else None,
                      callback=lambda i: trained.append(i["epoch"]) if i["event"] == "epoch" else None)
    out = capsys.readouterr().out
    assert "starting over, its key differs" in out and "checkpoint.stale.pt" in out
    assert {"dropout": "params.dropout: 0.2 -> 0.9", "text": "train:", "key": "key.init_from: <absent> -> aaaa"}[change] in out
    assert trained == [1, 2]  # trained again from the start
    if change != "key":  # (with only the key changed the same training gives the same weights)
        assert not _same_weights(first.model, res.model)
    # the new checkpoint is now the one reused
    seen = []
    again = train_model(_model(params=params), train, VAL, params, CFG, tmp_path, epochs=2, seed=4, progress=False,
                        key=key if change == "key" else None, callback=lambda i: seen.append(i))
    assert seen == [] and _same_weights(again.model, res.model)


def test_unreadable_checkpoint_starts_over(tmp_path, capsys):
    _train(tmp_path, epochs=1, seed=4)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    res = _train(tmp_path, epochs=1, seed=4, progress=True)
    assert "starting over, it is unreadable" in capsys.readouterr().out
    assert res.history["epoch"].tolist() == [1]


def test_threshold_tuned_on_float32_probabilities(tmp_path, monkeypatch):
    """With mixed precision (bf16 autocast, here forced on CPU) the final tuning of the threshold
    uses float32 predictions, the precision of the test predictions."""
    import rationale_kit.training.loop as T

    monkeypatch.setattr(T, "_use_amp", lambda cfg, dev: True)
    monkeypatch.setattr(T, "amp_dtype", lambda dev: torch.bfloat16)
    calls = []
    real = T.predict_encoded

    def spy(model, encoded, batch_size, device, amp_dtype=None):
        calls.append(amp_dtype)
        return real(model, encoded, batch_size, device, amp_dtype)

    monkeypatch.setattr(T, "predict_encoded", spy)
    res = _train(tmp_path, epochs=2, seed=4)
    assert calls[:2] == [torch.bfloat16, torch.bfloat16]  # per-epoch monitoring under autocast
    assert calls[-1] is None  # the threshold: float32
    probs = predict_probs(res.model, VAL, batch_size=16)
    from rationale_kit.metrics.coding import label_matrix, tune_threshold

    assert res.threshold == tune_threshold(label_matrix(VAL["codes"], list(KEYS)), probs, CFG.threshold_grid)[0]
