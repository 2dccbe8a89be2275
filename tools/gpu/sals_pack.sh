#!/usr/bin/env bash
# Builds the SALS kernel tests and benchmark in $BUILD_DIR (default build/, configured for sm_90
# when new; configure it with -DCMAKE_CUDA_ARCHITECTURES=90a for the fused rebuild's wgmma path)
# and stages them in $BUILD_DIR/carry/ (git-ignored; apart from tools/gpu/pack.sh's .carry/,
# which other work fills): bin/, lib/ (the shared libraries the GPU machine lacks), run.sh,
# check.sh (tools/gpu/sals_check.sh) and sdpa_reference.py.
# Usage: tools/gpu/sals_pack.sh; then, with the device tool:
#   run(command="bash build/carry/check.sh", carry=["build/carry"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${BUILD_DIR:-build}"
tests=(kernels_sals_kv_write_test kernels_sals_decode_test)
benches=(bench_sals_attention)

[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
ninja -C "$build" "${tests[@]}" "${benches[@]}"

carry="$build/carry"
rm -rf "$carry"
mkdir -p "$carry/bin" "$carry/lib"
for t in "${tests[@]}"; do cp "$build/tests/gpu/$t" "$carry/bin/"; done
for b in "${benches[@]}"; do cp "$build/bench/$b" "$carry/bin/"; done

# As tools/gpu/pack.sh: everything ldd resolves except what the GPU machine has.
for bin in "$carry"/bin/*; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
  sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      ld-linux* | libc.so* | libm.so* | libmvec.so* | libpthread.so* | libdl.so* | librt.so* | \
        libresolv.so* | libutil.so* | libanl.so* | libnsl.so* | libstdc++.so* | libgcc_s.so* | \
        libz.so* | libssl.so* | libcrypto.so* | libcuda.so* | libcudart.so* | libcublas* | \
        libnvrtc* | libnvJitLink* | libcurand* | libcufft* | libcusparse* | libcusolver*)
        ;;
      *) cp -L "$lib" "$carry/lib/" ;;
    esac
  done

cat > "$carry/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a command with the carried libraries: run.sh BINARY [args...]
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
RUN
cp tools/gpu/sals_check.sh "$carry/check.sh"
cp bench/sdpa_reference.py "$carry/sdpa_reference.py"
chmod +x "$carry/run.sh" "$carry/check.sh"
echo "packed: $(ls "$carry/bin" | wc -l) binaries, $(ls "$carry/lib" | wc -l) libraries," \
  "$(du -sh "$carry" | cut -f1)"
