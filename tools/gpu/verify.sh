#!/usr/bin/env bash
# The device-side check, run from the repository root on the GPU machine after tools/gpu/pack.sh:
# device facts, the kernel tests, compute-sanitizer memcheck over them, and the decode attention
# benchmark. Logs and the benchmark JSON go to $OUT (./out when unset); the summary prints last.
set -uo pipefail
out="${OUT:-out}"
mkdir -p "$out"
run=.carry/run.sh
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
tests=(kernels_elementwise_test kernels_attention_test)
summary=()

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv |
  tee "$out/device.txt"

for t in "${tests[@]}"; do
  timeout 90 "$run" ".carry/bin/$t" --gtest_brief=1 >"$out/$t.log" 2>&1
  rc=$?
  tail -n 25 "$out/$t.log"
  summary+=("$t: rc=$rc $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/$t.log" | tr '\n' ' ')")
done

timeout 90 "$run" .carry/bin/bench_decode_attention --json "$out/bench_decode_attention.json" \
  >"$out/bench_decode_attention.log" 2>&1
summary+=("bench_decode_attention: rc=$?")

for t in "${tests[@]}"; do
  timeout 100 "$run" "$sanitizer" --tool memcheck --error-exitcode 3 \
    ".carry/bin/$t" --gtest_brief=1 >"$out/memcheck_$t.log" 2>&1
  rc=$?
  summary+=("memcheck $t: rc=$rc $(grep -E 'ERROR SUMMARY' "$out/memcheck_$t.log" | head -n 1)")
  grep -E '^=========     at ' "$out/memcheck_$t.log" | sed 's/+0x.*//' | sort | uniq -c | head -n 5
done
# Shared-memory races (block ids, K/V tiles): one decode and one prefill shape suffice.
timeout 60 "$run" "$sanitizer" --tool racecheck --error-exitcode 3 \
  .carry/bin/kernels_attention_test --gtest_brief=1 --gtest_filter='*f16_d64_g4_kv2_bs7*' \
  >"$out/racecheck.log" 2>&1
summary+=("racecheck attention: rc=$? $(grep -E 'RACECHECK SUMMARY' "$out/racecheck.log" | tail -n 1)")

echo
echo "==== benchmark"
cat "$out/bench_decode_attention.log"
echo "==== summary"
printf '%s\n' "${summary[@]}"
