"""Compare every table of two artifact trees (e.g. a run before and after a change): every CSV, parquet
and JSON file of BEFORE against the same file in AFTER, byte for byte, else value by value with the
wall-clock columns left out. Usage: python tools/compare_artifacts.py BEFORE AFTER"""
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd

a_root, b_root = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file() and p.suffix in {".csv", ".parquet", ".json"})
same = differ = 0
for rel in files:
    a, b = a_root / rel, b_root / rel
    if not b.exists():
        print(f"MISSING after: {rel}"); differ += 1; continue
    if a.read_bytes() == b.read_bytes():
        same += 1; continue
    if rel.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        if ja == jb:
            same += 1; continue
        print(f"DIFF json {rel}: {[k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)][:8] if isinstance(ja, dict) else '...'}"); differ += 1; continue
    fa = pd.read_csv(a) if rel.suffix == ".csv" else pd.read_parquet(a)
    fb = pd.read_csv(b) if rel.suffix == ".csv" else pd.read_parquet(b)
    extra = [c for c in fb.columns if c not in fa.columns]
    missing = [c for c in fa.columns if c not in fb.columns]
    # wall-clock columns, and the LLM call log's cache flags (a rerun answers from the cache), are not results
    timing = {"seconds", "latency_s", "cached", "status", "wait_s", "elapsed_s", "attempts"} if "llm_calls" in rel.name else {"seconds"}
    common = [c for c in fa.columns if c in fb.columns and c not in timing]
    skipped = [c for c in fa.columns if c in timing]
    try:
        pd.testing.assert_frame_equal(fa[common], fb[common], check_exact=True)
        note = "identical values"
    except AssertionError:
        try:
            pd.testing.assert_frame_equal(fa[common], fb[common], check_exact=False, rtol=0, atol=1e-12)
            num = fa[common].select_dtypes("number").columns
            md = float(np.nanmax(np.abs(fa[num].to_numpy(float) - fb[num].to_numpy(float)))) if len(num) else 0
            note = f"equal within 1e-12 (max abs diff {md:.2e})"
        except AssertionError as e:
            note = f"VALUES DIFFER: {str(e).splitlines()[0:3]}"
    print(f"{rel}: {note}" + (f" (left out: {skipped})" if skipped else "") + (f"; added columns {extra}" if extra else "") + (f"; MISSING columns {missing}" if missing else ""))
    differ += 1
print(f"{same} files byte-identical, {differ} other (listed above), of {len(files)}")
