#!/usr/bin/env bash
# `make test`: the suite on pytest-xdist's workers and, at the same time, the vLLM engine's tests in their own
# venv (vLLM pins transformers and fastapi below what the default install takes). Running them side by side
# keeps both cores busy: the vLLM tests mostly wait on engine processes starting, and the main suite's last
# minutes run one long test.
#   scripts/run-tests.sh MAIN_VENV VLLM_VENV [pytest arguments for both]
# PYTEST_WORKERS (default 2) sets the main suite's workers; each runs torch on one thread (OMP_NUM_THREADS,
# default 1): with a worker per core, a second intra-op thread only contends, and on the default model it cost
# 25 % more CPU time for 15 % less wall time in one process alone.
set -uo pipefail
main_venv=$1
vllm_venv=$2
shift 2
export OMP_WAIT_POLICY=PASSIVE
vllm_log=$(mktemp)
trap 'rm -f "$vllm_log"' EXIT

# The vLLM side writes no pytest cache: two runs would race on it.
"$vllm_venv/bin/python" -m pytest -q -ra -m vllm -p no:cacheprovider --durations=10 "$@" >"$vllm_log" 2>&1 &
vllm_pid=$!
# Files go to workers whole (their module fixtures start servers and engines once), in collection order:
# tests/conftest.py puts the longest first.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$main_venv/bin/python" -m pytest -q -ra --durations=25 -m "not vllm" \
  -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
main_rc=$?
wait "$vllm_pid"
vllm_rc=$?
[ "$vllm_rc" -eq 5 ] && vllm_rc=0 # pytest's "no tests selected": PYTEST_ARGS named only main-suite tests
echo
echo "=== the vLLM engine's tests ($vllm_venv) ==="
cat "$vllm_log"
echo "main suite: exit $main_rc; vLLM engine's tests: exit $vllm_rc"
[ "$main_rc" -eq 0 ] && [ "$vllm_rc" -eq 0 ]
