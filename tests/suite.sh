#!/usr/bin/env bash
# The test suite as `make test` runs it: PYTHON, WORKERS and RUNTIME_BOUND come from the Makefile.
#
# Most test files compile far more than they run (a fresh XLA program per model, size and dtype,
# run for a few calls), so they run with XLA's backend optimisation off
# (--xla_backend_optimization_level=0: about a third less compile time, programs about half as
# fast; no fast-math at either level). The files in RUNTIME_BOUND run long MD on few programs
# (10 ps of SO3LR on DHA), which would take twice as long that way: they run beside the others in a
# process of their own, fully optimised. Both must pass; the side run's output follows the main one.
set -u
side_log=$(mktemp)
trap 'rm -f "$side_log"' EXIT
read -r -a runtime_bound <<< "$RUNTIME_BOUND"
ignore=()
for path in "${runtime_bound[@]}"; do ignore+=("--ignore=$path"); done

XLA_FLAGS="${XLA_FLAGS:-}" "$PYTHON" -m pytest -q -p no:cacheprovider "${runtime_bound[@]}" >"$side_log" 2>&1 &
side=$!
XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0" \
	"$PYTHON" -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder "${ignore[@]}"
main_status=$?
wait "$side"
side_status=$?
echo
echo "=== ${runtime_bound[*]} (fully optimised, beside the rest): exit $side_status ==="
cat "$side_log"
[ "$main_status" -eq 0 ] && [ "$side_status" -eq 0 ]
