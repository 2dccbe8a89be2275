#!/usr/bin/env bash
# The SALS device check, run from the repository root on the GPU machine after
# tools/gpu/sals_pack.sh: the SALS kernel tests, compute-sanitizer memcheck over the writers and
# a small slice of the decode tests, then torch SDPA (flash, cuDNN) and bench_sals_attention in
# the same session so that the ratios are fair. Logs and JSON go to $OUT (./out when unset); the
# benchmark tables and the summary print last.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-out}"
mkdir -p "$out"
run="$here/run.sh"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
summary=()

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv |
  tee "$out/device.txt"

for t in kernels_sals_kv_write_test kernels_sals_decode_test; do
  timeout 300 "$run" "$here/bin/$t" --gtest_brief=1 >"$out/$t.log" 2>&1
  rc=$?
  grep -E '^\[  FAILED  \]|Failure|error' "$out/$t.log" | head -n 20
  summary+=("$t: rc=$rc $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/$t.log" | tr '\n' ' ')")
done

memcheck() {  # name, binary, gtest filter
  timeout 200 "$run" "$sanitizer" --tool memcheck --error-exitcode 3 "$here/bin/$2" \
    --gtest_brief=1 --gtest_filter="$3" >"$out/memcheck_$1.log" 2>&1
  local rc=$?
  summary+=("memcheck $1: rc=$rc $(grep -E 'ERROR SUMMARY' "$out/memcheck_$1.log" | head -n 1)")
  grep -E '^=========     at ' "$out/memcheck_$1.log" | sed 's/+0x.*//' | sort | uniq -c | head -n 5
}
memcheck write kernels_sals_kv_write_test '*'
memcheck decode kernels_sals_decode_test \
  'SalsTopK*:*SparseAttention*bf16_kv4_g1_d128_r64*:*WholeStep*f16_kv3_g2_d64*'

PYTHONUNBUFFERED=1 timeout 240 python3 "$here/sdpa_reference.py" --json "$out/sdpa.json" \
  >"$out/sdpa.log" 2>&1
summary+=("sdpa_reference: rc=$?")
timeout 300 "$run" "$here/bin/bench_sals_attention" --sdpa "$out/sdpa.json" \
  --json "$out/bench_sals_attention.json" >"$out/bench_sals_attention.log" 2>"$out/bench.err"
summary+=("bench_sals_attention: rc=$?")
tail -n 5 "$out/bench.err"

echo
echo "==== benchmark"
cat "$out/bench_sals_attention.log"
echo "==== summary"
printf '%s\n' "${summary[@]}"
