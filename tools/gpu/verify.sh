#!/usr/bin/env bash
# The device-side check, run from the repository root on the GPU machine after tools/gpu/pack.sh:
# device facts, the GPU tests, compute-sanitizer over them, and the benchmarks. Logs and the
# benchmark JSON go to $OUT (./out when unset); the summary prints last.
# Usage: .carry/verify.sh [all|kernels|sals|sampling|backend|calibrate|tests|prefill|e2e_prefill|parity|
#   server|server_itl]
#   (all by default; all leaves out prefill, e2e_prefill, parity, server and server_itl, which take
#   minutes of device time)
#   kernels: the dense kernel tests, memcheck and racecheck over them, bench_decode_attention;
#   sals: the SALS kernel tests, memcheck over them, torch SDPA (FlashAttention-2, cuDNN) and
#     bench_sals_attention in the same session (the ratios need both);
#   sampling: the sampling kernel test, memcheck over it, bench_sampling;
#   backend: cuda_backend_test, memcheck over a short part of it, gpt_fast_baseline.py (gpt-fast's
#     method in PyTorch) and bench_e2e_decode (dense and both SALS presets) in the same session;
#   calibrate: cuda_calibration_test (CUDA against CPU calibration on the fixtures) and the
#     timing of sals-calibrate --backend cuda on the Llama-3.1-8B shape (synthetic weights), 512
#     sequences of 4096 tokens (tools/calibrate/README.md);
#   tests: every test binary, no sanitizer, no benchmark;
#   prefill: the prefill attention tests (chunks on awkward shapes included), memcheck over one
#     chunked case, torch SDPA prefill (FlashAttention-2, cuDNN) and bench_prefill_attention in
#     the same session (the ratios need both);
#   e2e_prefill: bench_e2e_prefill (one 32K and one 128K prompt; dense and both SALS presets);
#   parity: tools/parity/make_real_shape_models.py writes random-weight models of the shapes of
#     Llama-3.1-8B, Llama-2-7B and Mistral-7B (PARITY_LAYERS layers, 2 by default; bf16 and fp16)
#     with transformers' fp32 references to /tmp/real_shape, real_shape_parity_test runs the CUDA
#     backend against them, and parity_record.py writes $OUT/real_shape_parity.json, the record to
#     commit as tests/gpu/records/real_shape_parity.json (issue 16 item 3).
#     PARITY_GENERATOR_ARGS adds generator options (e.g. "--only llama-3.1-8b"; "--tiny --device
#     cpu" for a dry run of the plumbing without a GPU).
#   server: sals-server (CUDA backend, synthetic Llama-3.1-8B weights, f16) with a KV pool of
#     SERVER_GIB GiB (50: an H100; 100 on an H200), one server per format of SERVER_FORMATS (dense
#     sals-12.5), each driven by sals-loadtest --concurrency pool: as many SERVER_PROMPT_LEN-token
#     (32768) prompts with SERVER_OUTPUT_LEN (256) output tokens as the pool holds, all at once
#     (issue 12's server run); $OUT/server-FORMAT.json per format;
#   server_itl: a dense server (SERVER_GIB, 8192-token steps) per prefill budget of SERVER_BUDGETS
#     (2048 4096 8192): 8 background streams decoding while 8 prompts of 32K tokens arrive at
#     0.1/s, plus a baseline of 128-token prompts; $OUT/itl-BUDGET.json (bench/README.md, "Long
#     prompts beside running streams").
#   Both need tools/gpu/pack.sh sals-server sals-loadtest.
# The benchmarks name the GPU in their JSON records (GPU=H100 or H200; from nvidia-smi if unset).
set -uo pipefail
out="${OUT:-out}"
mode="${1:-all}"
mkdir -p "$out"
carry="$(cd "$(dirname "$0")" && pwd)"
run="$carry/run.sh"
bin="$carry/bin"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
summary=()
benches=()

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv |
  tee "$out/device.txt"
gpu="${GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | grep -oE 'H[0-9]+' ||
  echo unknown)}"

run_test() {  # name
  timeout 120 "$run" "$bin/$1" --gtest_brief=1 >"$out/$1.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$1.log"
  summary+=("$1: rc=$rc $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/$1.log" | tr '\n' ' ')")
}

memcheck() {  # name timeout [gtest args...]
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$run" "$sanitizer" --tool memcheck --error-exitcode 3 \
    "$bin/$name" --gtest_brief=1 "$@" >"$out/memcheck_$name.log" 2>&1
  local rc=$?
  local errors
  errors="$(grep -E 'ERROR SUMMARY' "$out/memcheck_$name.log" | head -n 1)"
  summary+=("memcheck $name: rc=$rc $errors")
  grep -E '^=========     at ' "$out/memcheck_$name.log" | sed 's/+0x.*//' | sort | uniq -c |
    head -n 5
}

bench() {  # name timeout [args...]
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$run" "$bin/$name" --json "$out/$name.json" "$@" >"$out/$name.log" 2>&1
  summary+=("$name: rc=$?")
  benches+=("$name")
}

if [ "$mode" = tests ]; then
  for t in kernels_elementwise_test kernels_attention_test kernels_sals_kv_write_test \
    kernels_sals_decode_test kernels_sals_materialize_test kernels_sampling_test \
    cuda_backend_test cuda_calibration_test real_shape_parity_test; do
    run_test "$t"
  done
fi

if [ "$mode" = all ] || [ "$mode" = kernels ]; then
  run_test kernels_elementwise_test
  run_test kernels_attention_test
  bench bench_decode_attention 90
  memcheck kernels_elementwise_test 100
  memcheck kernels_attention_test 100
  # Shared-memory races (block ids, K/V tiles): one decode and one prefill shape suffice.
  timeout 60 "$run" "$sanitizer" --tool racecheck --error-exitcode 3 \
    "$bin/kernels_attention_test" --gtest_brief=1 --gtest_filter='*f16_d64_g4_kv2_bs7*' \
    >"$out/racecheck.log" 2>&1
  summary+=("racecheck attention: rc=$? $(grep -E 'RACECHECK SUMMARY' "$out/racecheck.log" |
    tail -n 1)")
fi

if [ "$mode" = all ] || [ "$mode" = sals ]; then
  run_test kernels_sals_kv_write_test
  run_test kernels_sals_decode_test
  run_test kernels_sals_materialize_test
  memcheck kernels_sals_kv_write_test 100
  memcheck kernels_sals_decode_test 200 \
    --gtest_filter='SalsTopK*:*SparseAttention*bf16_kv4_g1_d128_r64*:*WholeStep*f16_kv3_g2_d64*'
  memcheck kernels_sals_materialize_test 100
  PYTHONUNBUFFERED=1 timeout 240 python3 "$carry/sdpa_reference.py" --json "$out/sdpa.json" \
    >"$out/sdpa.log" 2>&1
  summary+=("sdpa_reference: rc=$?")
  bench bench_sals_attention 300 --sdpa "$out/sdpa.json" --gpu "$gpu"
fi

if [ "$mode" = all ] || [ "$mode" = sampling ]; then
  run_test kernels_sampling_test
  memcheck kernels_sampling_test 200 --gtest_filter='*Degenerate*:*ManyDraws*:*RejectsBad*'
  bench bench_sampling 200
fi

if [ "$mode" = all ] || [ "$mode" = backend ]; then
  run_test cuda_backend_test
  # Prefill batch, padded decode graphs, rejected batches: the backend's launches and copies.
  memcheck cuda_backend_test 120 \
    --gtest_filter='*FreeGreedy*mistral_gqa_F16*:*RejectsBadBatches*'
  # GPT_FAST_ARGS, e.g. "--no_coordinate_descent" (minutes less compiling) or "--shapes 8x32768".
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 360 python3 "$carry/gpt_fast_baseline.py" --json "$out/gpt_fast.json" \
    --gpu "$gpu" ${GPT_FAST_ARGS:-} >"$out/gpt_fast.log" 2>&1
  summary+=("gpt_fast_baseline: rc=$?")
  bench bench_e2e_decode 300 --kv dense,sals-25,sals-12.5 --gpt_fast "$out/gpt_fast.json" \
    --gpu "$gpu"
fi

if [ "$mode" = all ] || [ "$mode" = calibrate ]; then
  run_test cuda_calibration_test
  timeout 500 "$run" "$bin/sals-calibrate" --synthetic llama-3.1-8b --backend cuda \
    --cuda-dtype bf16 --seq-len 4096 --max-tokens 2097152 --checkpoint-s 0 \
    --out /tmp/sals_calibration_8b.safetensors >"$out/calibrate_8b.log" 2>&1
  summary+=("sals-calibrate 8B shape: rc=$? $(grep -E '^times:' "$out/calibrate_8b.log")")
  benches+=(calibrate_8b)
fi

if [ "$mode" = prefill ]; then
  timeout 300 "$run" "$bin/kernels_attention_test" --gtest_brief=1 --gtest_filter='*Prefill*' \
    >"$out/kernels_attention_test.log" 2>&1
  rc=$?
  summary+=("kernels_attention_test (prefill): rc=$rc $(grep -E '^\[  (PASSED|FAILED)  \]' \
    "$out/kernels_attention_test.log" | tr '\n' ' ')")
  tail -n 25 "$out/kernels_attention_test.log"
  memcheck kernels_attention_test 200 --gtest_filter='*ChunkedPrefill*f16_d128_g4_kv2_bs16*'
  PYTHONUNBUFFERED=1 timeout 420 python3 "$carry/sdpa_prefill_reference.py" \
    --json "$out/sdpa_prefill.json" >"$out/sdpa_prefill.log" 2>&1
  summary+=("sdpa_prefill_reference: rc=$?")
  bench bench_prefill_attention 420 --sdpa "$out/sdpa_prefill.json" --gpu "$gpu"
fi

if [ "$mode" = e2e_prefill ]; then
  bench bench_e2e_prefill 560 --kv dense,sals-25,sals-12.5 --gpu "$gpu"
fi

# serve SETTINGS LOG: sals-server on 127.0.0.1:50051 with the CUDA backend on synthetic
# Llama-3.1-8B weights and SETTINGS (--set syntax) added; its pid in $server_pid.
serve() {
  "$run" "$bin/sals-server" --listen 127.0.0.1:50051 --metrics-listen 127.0.0.1:9464 \
    --set "backend.type=cuda;model.synthetic=llama-3.1-8b;kv_cache.memory_gib=${SERVER_GIB:-50};$1" \
    >"$2" 2>&1 &
  server_pid=$!
}
stop_server() {  # name
  kill -TERM "$server_pid" 2>/dev/null
  wait "$server_pid"
  summary+=("sals-server $1: exit $?")
}
loadtest() {  # name timeout [args...]: sals-loadtest against the server above
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$run" "$bin/sals-loadtest" --target 127.0.0.1:50051 --connect_timeout_s 300 \
    --json "$out/$name.json" --label "$name ($gpu)" --quiet "$@" >"$out/$name.log" 2>&1
  summary+=("sals-loadtest $name: rc=$?")
  tail -n 12 "$out/$name.log"
}

if [ "$mode" = server ]; then
  prompt="${SERVER_PROMPT_LEN:-32768}"
  output="${SERVER_OUTPUT_LEN:-256}"
  for fmt in ${SERVER_FORMATS:-dense sals-12.5}; do
    serve "kv_cache.format=$fmt;scheduler.max_num_seqs=256;scheduler.max_num_batched_tokens=8192;\
scheduler.max_model_len=$((prompt + output))" "$out/server-$fmt.log"
    loadtest "server-$fmt" 560 --concurrency pool --warmup_requests 0 --prompt_len "$prompt" \
      --output_len "$output" --timeout_s 540
    stop_server "$fmt"
    grep -E 'error|ERROR|graph' "$out/server-$fmt.log" | tail -n 5
  done
fi

if [ "$mode" = server_itl ]; then
  for budget in baseline ${SERVER_BUDGETS:-2048 4096 8192}; do
    [ "$budget" = baseline ] && setting="" || setting="scheduler.max_prefill_tokens=$budget"
    serve "kv_cache.format=dense;scheduler.max_num_batched_tokens=8192;$setting" \
      "$out/server-itl-$budget.log"
    [ "$budget" = baseline ] && prompt=128 || prompt=32768
    loadtest "itl-$budget" 300 --background_streams 8 --background_prompt_len 128 \
      --background_output_len 1024 --request_rate 0.1 --num_requests 8 --prompt_len "$prompt" \
      --output_len 16 --warmup_requests 0 --percentiles 50,99 --timeout_s 280
    stop_server "itl-$budget"
  done
fi

if [ "$mode" = parity ]; then
  models="${PARITY_MODELS_DIR:-/tmp/real_shape}"
  PYTHONUNBUFFERED=1 timeout 360 python3 "$carry/parity/make_real_shape_models.py" --out "$models" \
    --layers "${PARITY_LAYERS:-2}" ${PARITY_GENERATOR_ARGS:-} >"$out/make_real_shape_models.log" 2>&1
  summary+=("make_real_shape_models: rc=$?")
  grep -vE 'Loading weights|Writing model shards' "$out/make_real_shape_models.log" | tail -n 12
  dirs="$(grep -E '^SALS_REAL_SHAPE_MODELS=' "$out/make_real_shape_models.log" | tail -n 1 |
    cut -d= -f2)"
  SALS_REAL_SHAPE_MODELS="$dirs" timeout 200 "$run" "$bin/real_shape_parity_test" \
    >"$out/real_shape_parity_test.log" 2>&1
  rc=$?
  grep -E '^\[(record|near-tie|DIVERGED)\]' "$out/real_shape_parity_test.log"
  summary+=("real_shape_parity_test: rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\]' \
    "$out/real_shape_parity_test.log" | tr '\n' ' ')")
  python3 "$carry/parity/parity_record.py" --log "$out/real_shape_parity_test.log" --gpu "$gpu" \
    --command "bash .carry/verify.sh parity (PARITY_LAYERS=${PARITY_LAYERS:-2})" \
    --out "$out/real_shape_parity.json" >"$out/parity_record.log" 2>&1
  summary+=("parity record: rc=$? (\$OUT/real_shape_parity.json -> tests/gpu/records/)")
  cat "$out/parity_record.log"
fi

for b in "${benches[@]}"; do
  echo
  echo "==== $b"
  cat "$out/$b.log"
done
echo "==== summary"
printf '%s\n' "${summary[@]}"

# The device tool brings back at most 8 files from $OUT: the logs travel as one archive, and the
# JSON results as another when there are more than six of them.
(
  cd "$out" || exit 0
  ls -- *.log *.txt 2>/dev/null | tar -cJf logs.tar.xz -T - && rm -f -- *.log *.txt
  if [ "$(ls -- *.json 2>/dev/null | wc -l)" -gt 6 ]; then
    tar -cJf results.tar.xz -- *.json && rm -f -- *.json
  fi
)
