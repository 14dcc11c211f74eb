#!/usr/bin/env bash
# The prepared GPU check (one GPU, under 5 minutes): the `cuda`-marked tests, then `bench.py functions` and
# `bench.py pipeline` at 8 layers of width 8192, batch 8192, bf16 and fp32 (fp32 GEMMs on TF32 tensor cores;
# every contender's gradients and loss checked against a float64 reference; the headline named in advance),
# `bench.py gemms` (one layer's GEMMs at microbatch vs full-batch shapes: where the time goes), then a short
# table of every figure and target verdict, printed last.
#
#   bash scripts/device_check.sh                    # results under $OUT if set, else ./out
#   OUT=/tmp/gpu PYTHON=python3 bash scripts/device_check.sh
#   DEVICE=cpu WIDTH=64 BATCH=64 bash scripts/device_check.sh     # a dry run of the mechanics on a CPU
#
# Robust by construction: runs from the source tree (PYTHONPATH, no install, no network), every part under
# `timeout` (a hang costs at most its limit; the limits add up to 275 s), a failed part does not stop the
# next, and the benchmarks rewrite their JSON after each dtype, so bf16 figures survive a later timeout.
# $OUT receives: parts.txt (exit status and seconds per part), <part>.log, functions.json, pipeline.json,
# gemms.json, summary.txt.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY="$candidate"
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "device_check: no python with torch found (set PYTHON=...)" | tee "$OUT/parts.txt"
  exit 1
fi
: > "$OUT/parts.txt"
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND... : run with a time limit, log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$2 rc status begin
  shift 2
  begin=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout -k 2 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT" ;;
    *) status="failed rc=$rc" ;;
  esac
  printf '%-10s %-14s %4ss\n' "$name" "$status" "$(( $(date +%s) - begin ))" | tee -a "$OUT/parts.txt"
  if [ "$rc" -ne 0 ]; then tail -n 30 "$OUT/$name.log"; elif [ "$name" != summary ]; then tail -n 3 "$OUT/$name.log"; fi
}

DEVICE="${DEVICE:-cuda}"
WIDTH="${WIDTH:-8192}"
BIG=(--device "$DEVICE" --layers 8 --batch "${BATCH:-8192}" --tf32)

part env 15 "$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'python', platform.python_version()); ok = torch.cuda.is_available(); print(torch.cuda.get_device_name(0) if ok \
else 'no GPU', round(torch.cuda.get_device_properties(0).total_memory / 2**30) if ok else '', 'GiB')"
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  part tests 45 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
else
  echo "tests      skipped (no pytest)" | tee -a "$OUT/parts.txt"
fi
part functions 100 "$PY" scripts/bench.py functions "${BIG[@]}" --widths "$WIDTH" --dtypes bfloat16,float32 \
  --warmup 3 --repeats 10 --json "$OUT/functions.json"
# --no-compile: the compiled full batch is in `functions` (compiling 8 x 8192 again would not fit the limit)
part pipeline 120 "$PY" scripts/bench.py pipeline "${BIG[@]}" --width "$WIDTH" --stages 4 --microbatches 8 \
  --dtypes bfloat16,float32 --warmup 2 --repeats 8 --no-compile --json "$OUT/pipeline.json"
part gemms 20 "$PY" scripts/bench.py gemms "${BIG[@]}" --width "$WIDTH" --microbatches 8 --dtypes bfloat16,float32 \
  --warmup 2 --repeats 10 --json "$OUT/gemms.json"
part summary 10 "$PY" scripts/bench.py summary "$OUT/functions.json" "$OUT/pipeline.json" "$OUT/gemms.json"
cp "$OUT/summary.log" "$OUT/summary.txt" 2>/dev/null

echo
echo "== device check: $(( $(date +%s) - START ))s in all; parts:"
cat "$OUT/parts.txt"
echo
cat "$OUT/summary.txt" 2>/dev/null
