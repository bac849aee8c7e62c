"""Is training bit-identical on this machine, and what breaks it? (docs/REPRODUCIBILITY.md)

Trains one coding model of a profile (default: smoke's CAML) several times, each in a fresh Python
process with its own random ``PYTHONHASHSEED``, and prints the SHA-256 of the trained weights and
the validation micro-F1 per run: twice with the profile's ``common.threads`` (expected: identical),
then with other torch thread counts (``--threads``), which change the order of floating-point
reductions.

    python benchmarks/determinism.py                       # smoke CAML, threads = profile's, 1
    python benchmarks/determinism.py --profile default --model laat --threads 1 2
"""
from __future__ import annotations

import argparse
import json
import os
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
from rationale_kit.workbook import steps

profile, model, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
prof = load_profile(profile)
seed_everything(prof.common.seed)          # what workbook.context.setup does in every notebook
torch.set_num_threads(threads)
ds = data.load_dataset(prof)
res = steps.fit_model(model, prof, ds.docs, steps.label_space(ds.docs), out, "cpu")
h = hashlib.sha256()
for k, v in sorted(res.model.state_dict().items()):
    h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
print(json.dumps({"sha256": h.hexdigest()[:16], "val_micro_f1": res.val_metrics.get("micro_f1")}))
"""


def train_once(profile: str, model: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": str(secrets.randbelow(2**31)), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _CHILD, profile, model, str(threads), tmp], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"training failed (threads {threads}):\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    return {**res, "threads": threads, "hashseed": env["PYTHONHASHSEED"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--model", default="caml", choices=["caml", "laat", "plm_icd"])
    ap.add_argument("--threads", type=int, nargs="*", default=[1], help="other torch thread counts to try")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from rationale_kit.core.config import load_profile

    base = load_profile(args.profile).common.threads
    runs = [train_once(args.profile, args.model, base), train_once(args.profile, args.model, base)]
    runs += [train_once(args.profile, args.model, t) for t in args.threads if t != base]
    print(f"profile {args.profile}, model {args.model}, torch {__import__('torch').__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':>3} {'threads':>7} {'PYTHONHASHSEED':>14} {'weights sha256':>16} {'val micro-F1':>12} {'seconds':>7}")
    for i, r in enumerate(runs, 1):
        print(f"{i:>3} {r['threads']:>7} {r['hashseed']:>14} {r['sha256']:>16} {r['val_micro_f1']:>12.6f} {r['seconds']:>7}")
    same = runs[0]["sha256"] == runs[1]["sha256"]
    print(f"same threads, two processes: {'bit-identical' if same else 'DIFFERENT'}")
    for r in runs[2:]:
        print(f"threads {r['threads']} vs {base}: {'bit-identical' if r['sha256'] == runs[0]['sha256'] else 'different weights'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
