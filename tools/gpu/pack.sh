#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here and stages them in .carry/ for the device tool:
# .carry/bin (binaries, and sals-calibrate for its --backend cuda timing), .carry/lib (every shared library ldd resolves that the GPU machine
# lacks), .carry/run.sh (runs a command with those libraries), .carry/verify.sh (the full check),
# .carry/parity (the real-shape model generator and its record step, for verify.sh parity).
# The CUDA backend's library goes into .carry/bin, next to the programs that load it.
# Usage: tools/gpu/pack.sh [NAME...]   (BUILD_DIR=build by default, configured Release for sm_90a
# if new). NAMEs pack only those tests/benchmarks: the working tree and the carry share 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${BUILD_DIR:-build}"
tests=(kernels_elementwise_test kernels_attention_test kernels_sals_kv_write_test
  kernels_sals_decode_test kernels_sals_materialize_test kernels_sampling_test cuda_backend_test
  cuda_calibration_test real_shape_parity_test)
benches=(bench_decode_attention bench_sals_attention bench_e2e_decode bench_sampling
  bench_prefill_attention bench_e2e_prefill)
# Programs and where the build puts them; sals-server and sals-loadtest (verify.sh server) only
# when named.
declare -A program_dir=([sals-calibrate]=tools/calibrate [sals-server]=server
  [sals-loadtest]=loadtest)
programs=(sals-calibrate)
if [ $# -gt 0 ]; then
  wanted=" $* "
  keep() { local out=() x; for x in "$@"; do [[ "$wanted" == *" $x "* ]] && out+=("$x"); done
    echo "${out[@]}"; }
  read -r -a tests <<<"$(keep "${tests[@]}")"
  read -r -a benches <<<"$(keep "${benches[@]}")"
  read -r -a programs <<<"$(keep "${!program_dir[@]}")"
fi

[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
# The programs that load the CUDA backend at run time need its library beside them.
backend=()
if [[ " ${tests[*]} ${benches[*]} ${programs[*]} " =~ \ (cuda_backend_test|cuda_calibration_test|real_shape_parity_test|bench_e2e_decode|bench_e2e_prefill|sals-calibrate|sals-server)\  ]]; then
  backend=(sals_backend_cuda)
fi
ninja -C "$build" "${tests[@]}" "${benches[@]}" "${programs[@]}" "${backend[@]}"

rm -rf .carry
mkdir -p .carry/bin .carry/lib
for t in "${tests[@]}"; do cp "$build/tests/gpu/$t" .carry/bin/; done
for b in "${benches[@]}"; do cp "$build/bench/$b" .carry/bin/; done
for p in "${programs[@]}"; do cp "$build/${program_dir[$p]}/$p" .carry/bin/; done
if [ ${#backend[@]} -gt 0 ]; then
  cp "$build/engine/backend/cuda/libsals_backend_cuda.so" .carry/bin/
fi

strip --strip-unneeded .carry/bin/*  # the working tree and the carry share 64 MiB

# The GPU machine (Ubuntu 24.04) has glibc, libstdc++, libgcc_s, libz, libssl/libcrypto and
# CUDA's own libraries; everything else the binaries load travels (docs/GPU.md).
for bin in .carry/bin/*; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
  sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      ld-linux* | libc.so* | libm.so* | libmvec.so* | libpthread.so* | libdl.so* | librt.so* | \
        libresolv.so* | libutil.so* | libanl.so* | libnsl.so* | libstdc++.so* | libgcc_s.so* | \
        libz.so* | libssl.so* | libcrypto.so* | libcuda.so* | libcudart.so* | libcublas* | \
        libnvrtc* | libnvJitLink* | libcurand* | libcufft* | libcusparse* | libcusolver*)
        ;;
      *) cp -L "$lib" .carry/lib/ ;;
    esac
  done

cat > .carry/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs a command with the carried libraries: .carry/run.sh .carry/bin/NAME [args...]
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
RUN
cp tools/gpu/verify.sh .carry/verify.sh
cp bench/sdpa_reference.py bench/sdpa_prefill_reference.py bench/gpt_fast_baseline.py .carry/
mkdir -p .carry/parity  # the generator finds hf_reference.py beside it
cp tools/parity/make_real_shape_models.py tools/parity/parity_record.py tools/fixtures/hf_reference.py \
  .carry/parity/
chmod +x .carry/run.sh .carry/verify.sh
echo "packed: $(ls .carry/bin | wc -l) binaries, $(ls .carry/lib | wc -l) libraries," \
  "$(du -sh .carry | cut -f1)"
