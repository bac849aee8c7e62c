#!/usr/bin/env bash
# The whole GPU check, as run on the GPU machine from the repository root (see docs/GPU.md):
#
#   bash tools/gpu_check.sh            # results in $OUT/gpu_check.json and $OUT/gpu_check.log
#
# 1. installs the wheels carried in the git-ignored .whl/ (gensim, smart_open, wrapt,
#    simple-icd-10-cm: not in that machine's Python) into $SITE (default /tmp/site); if pip
#    fails, the wheels are unpacked instead (a wheel is a zip); if that fails too, the run goes on
#    (gensim missing: CAML/LAAT start from random embeddings, the JSON says so);
# 2. runs benchmarks/gpu_check.py on CUDA offline under `timeout 540`, with the fp16 MiniLM copy
#    in the git-ignored .gpu/minilm as PLM-ICD's encoder.
#
# Extra arguments go to benchmarks/gpu_check.py (e.g. --time-limit 300). PYTHON, SITE and OUT
# can be overridden from the environment.
#
#   bash tools/gpu_check.sh prepare    # on the development machine: (re)build .whl/ and .gpu/
#
# downloads the cp312 manylinux wheels of the versions pinned in requirements.txt (gensim without
# its 22 MB of test data), writes .gpu/minilm (the bundled MiniLM's config and tokenizer, weights
# in float16: 45 MB; its config says float32, so it loads and trains in float32) and git-ignores both.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
  set -e
  VPY="${PYTHON:-.venv/bin/python}"
  for d in /.whl/ /.gpu/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
  pin() { grep -i "^$1==" requirements.txt | head -1; }
  rm -rf .whl && mkdir -p .whl
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$(pin gensim)" "$(pin wrapt)"
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    "$(pin smart_open)" "$(pin simple_icd_10_cm)"
  "$VPY" - <<'PYEOF'
import json, os, shutil, zipfile
from pathlib import Path
from safetensors.torch import load_file, save_file
from rationale_kit.models import bundled_encoder_path
# gensim without gensim/test/ (its test data), RECORD edited to match
src = next(Path(".whl").glob("gensim-*.whl"))
keep = ("gensim/test/__init__.py", "gensim/test/utils.py")
drop = lambda n: n.startswith("gensim/test/") and n not in keep
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(f"{src}.tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
    for info in zi.infolist():
        if drop(info.filename):
            continue
        data = zi.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not drop(l.split(",")[0])).encode()
        zo.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
os.replace(f"{src}.tmp", src)
# MiniLM: float16 weights, float32 config
m, dst = bundled_encoder_path(), Path(".gpu/minilm")
dst.mkdir(parents=True, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(m / f, dst / f)
sd = load_file(m / "model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
          dst / "model.safetensors", metadata={"format": "pt"})
cfg = json.loads((m / "config.json").read_text())
(dst / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}, indent=2))
PYEOF
  du -ch .whl .gpu | tail -1
  exit 0
fi
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$SITE" "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl; then
    echo "gpu_check.sh: pip install failed; unpacking the wheels into $SITE instead" >&2
    for w in .whl/*.whl; do
      "$PY" -m zipfile -e "$w" "$SITE" || echo "gpu_check.sh: could not unpack $w" >&2
    done
  fi
else
  echo "gpu_check.sh: no wheels in .whl/; running without them" >&2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF' 2>&1 | tee "$OUT/gpu_check.log"
import importlib
for name in ("gensim.models", "smart_open", "wrapt", "simple_icd_10_cm", "torch", "transformers"):
    try:
        mod = importlib.import_module(name)
        print(f"import {name}: ok {getattr(mod, '__version__', '')} ({getattr(mod, '__file__', '')})")
    except Exception as exc:  # noqa: BLE001
        print(f"import {name}: FAILED {type(exc).__name__}: {exc}")
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 | tee -a "$OUT/gpu_check.log"
ls -la .gpu/minilm 2>&1 | tee -a "$OUT/gpu_check.log"

timeout 540 "$PY" benchmarks/gpu_check.py --device cuda --out "$OUT/gpu_check.json" "$@" 2>&1 \
  | tee -a "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
echo "gpu_check.sh: benchmarks/gpu_check.py exited with $status (124 = timeout)" | tee -a "$OUT/gpu_check.log"
exit "$status"
