"""Is training bit-identical on this machine, and what breaks it? (docs/REPRODUCIBILITY.md)

Trains one coding model of a profile (default: smoke's CAML) several times, each in a fresh Python
process with its own random ``PYTHONHASHSEED``, and prints the SHA-256 of the trained weights and
the validation micro-F1 per run: twice with the profile's ``common.threads`` (expected: identical),
then with other torch thread counts (``--threads``), which change the order of floating-point
reductions.

Across machines the question is not "identical?" (it is not) but "within the seed spread?": with
``--isa avx2`` the same training runs with the CPU kernels an AVX2-only machine would use
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``: an emulated second
machine, same code and data), and with ``--seeds`` other training seeds give the spread to compare
the difference with.

    python benchmarks/determinism.py                       # smoke CAML, threads = profile's, 1
    python benchmarks/determinism.py --profile default --model laat --threads 1 2
    python benchmarks/determinism.py --profile default --threads --isa avx2 --seeds 14 15
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import hashlib, json, sys
import torch
from pathlib import Path
from rationale_kit import data
from rationale_kit.core.config import load_profile
from rationale_kit.core.runtime import seed_everything
from rationale_kit.workbook.protocols.data import label_space
from rationale_kit.workbook.protocols.common import with_seed
from rationale_kit.workbook.protocols.train import fit_model

profile, model, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
train_seed = None if sys.argv[5] == "-" else int(sys.argv[5])
prof = load_profile(profile)
seed_everything(prof.common.seed)          # what workbook.context.setup does in every notebook
torch.set_num_threads(threads)
ds = data.load_dataset(prof)               # the data depend on common.seed only, never on the training seed
train_prof = prof if train_seed is None else with_seed(prof, train_seed)
res = fit_model(model, train_prof, ds.docs, label_space(ds.docs), out, "cpu")
h = hashlib.sha256()
for k, v in sorted(res.model.state_dict().items()):
    h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
print(json.dumps({"sha256": h.hexdigest()[:16], "val_micro_f1": res.val_metrics.get("micro_f1"),
                  "isa": torch.backends.cpu.get_cpu_capability()}))
"""

# environment of an emulated machine whose CPU stops at this instruction set (torch's own kernels,
# oneDNN's and MKL's dispatch); "native" leaves the machine as it is
_ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                   "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
            "scalar": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                       "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}


def train_once(profile: str, model: str, threads: int, isa: str = "native", seed: int | None = None) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": str(secrets.randbelow(2**31)), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **_ISA_ENV[isa]}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _CHILD, profile, model, str(threads), tmp,
                              "-" if seed is None else str(seed)], env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"training failed (threads {threads}, isa {isa}, seed {seed}):\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    return {**res, "threads": threads, "hashseed": env["PYTHONHASHSEED"], "seed": seed, "emulated": isa,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--model", default="caml", choices=["caml", "laat", "plm_icd"])
    ap.add_argument("--threads", type=int, nargs="*", default=[1], help="other torch thread counts to try")
    ap.add_argument("--isa", nargs="*", default=[], choices=["avx2", "scalar"],
                    help="emulated machines: train again with the CPU kernels of this instruction set")
    ap.add_argument("--seeds", type=int, nargs="*", default=[],
                    help="other training seeds, for the spread an emulated machine's difference is compared with")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from rationale_kit.core.config import load_profile

    prof = load_profile(args.profile)
    base, seed0 = prof.common.threads, (list(prof.common.seeds or []) or [prof.common.seed])[0]
    runs = [train_once(args.profile, args.model, base), train_once(args.profile, args.model, base)]
    runs += [train_once(args.profile, args.model, t) for t in args.threads if t != base]
    machines = [train_once(args.profile, args.model, base, isa=i) for i in args.isa]
    seeded = [train_once(args.profile, args.model, base, seed=s) for s in args.seeds if s != seed0]
    print(f"profile {args.profile}, model {args.model}, torch {__import__('torch').__version__}, "
          f"{os.cpu_count()} CPUs, native kernels {runs[0]['isa']}")
    print(f"{'run':>3} {'threads':>7} {'kernels':>8} {'seed':>5} {'PYTHONHASHSEED':>14} {'weights sha256':>16} "
          f"{'val micro-F1':>12} {'seconds':>7}")
    for i, r in enumerate(runs + machines + seeded, 1):
        seed = seed0 if r["seed"] is None else r["seed"]
        print(f"{i:>3} {r['threads']:>7} {r['isa']:>8} {seed:>5} {r['hashseed']:>14} {r['sha256']:>16} "
              f"{r['val_micro_f1']:>12.6f} {r['seconds']:>7}")
    same = runs[0]["sha256"] == runs[1]["sha256"]
    print(f"same threads, two processes: {'bit-identical' if same else 'DIFFERENT'}")
    for r in runs[2:]:
        print(f"threads {r['threads']} vs {base}: {'bit-identical' if r['sha256'] == runs[0]['sha256'] else 'different weights'}")
    f1 = [runs[0]["val_micro_f1"]] + [r["val_micro_f1"] for r in seeded]
    sd = float(statistics.stdev(f1)) if len(f1) > 1 else float("nan")
    if seeded:
        print(f"training seeds {[seed0] + [r['seed'] for r in seeded]}: val micro-F1 "
              f"{statistics.mean(f1):.4f} ± {sd:.4f} (sd)")
    for r in machines:
        diff = r["val_micro_f1"] - runs[0]["val_micro_f1"]
        ident = "bit-identical" if r["sha256"] == runs[0]["sha256"] else "different weights"
        verdict = ("" if math.isnan(sd) else
                   f"; |difference| {abs(diff) / sd:.2f} seed sd: " + ("within" if abs(diff) <= 2 * sd else "OUTSIDE")
                   + " the seed spread (2 sd)")
        print(f"emulated {r['emulated']} machine vs this one: {ident}, val micro-F1 {diff:+.4f}{verdict}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
