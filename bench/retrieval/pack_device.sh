#!/usr/bin/env bash
# Stages sals-retrieval, its shared libraries, a model and a case file in one folder for the GPU
# machine (device tool; tools/gpu/README.md), where 16 CPU cores (--backend cpu) or the H200
# (--backend cuda) run a larger benchmark than a development machine can.
#
#   bench/retrieval/pack_device.sh MODEL_DIR CASES.jsonl|- [CARRY_DIR]
#   run(command="bash CARRY_DIR/run.sh --backend cuda --threads 16", carry=["CARRY_DIR"])
#
# CARRY_DIR defaults to $BUILD_DIR/retrieval-carry (git-ignored; BUILD_DIR defaults to build).
# run.sh passes its arguments on to sals-retrieval, with --model, --cases and --json
# $OUT/retrieval.json set. A model inside the working tree travels with it and is not copied. The CUDA backend's library travels when BUILD_DIR has one (or
# CUDA_BACKEND names it).
# Long cases are too large to carry (600 cases of 32K tokens are 70 MB): with CASES "-" none is
# packed and run.sh reads the file SALS_CASES names, made on the GPU machine by make_cases.py
# (the repository travels; the machine has python3 and sentencepiece). HAYSTACK=corpus.txt packs
# the haystack gzipped as CARRY_DIR/corpus.txt.gz (2.5 MB for the demo corpus) for that.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 2,16p "$0"; exit 2; }
model="$1"
cases="$2"
build="${BUILD_DIR:-build}"
carry="${3:-$build/retrieval-carry}"
bin="$build/bench/retrieval/sals-retrieval"
[ -x "$bin" ] || { echo "no $bin: build it first (cmake --build $build --target sals-retrieval)" >&2; exit 1; }
[ -f "$model/config.json" ] || { echo "$model: not a model directory" >&2; exit 1; }
[ "$cases" = - ] || [ -f "$cases" ] || { echo "$cases: no such file" >&2; exit 1; }

rm -rf "$carry"
mkdir -p "$carry/bin" "$carry/lib"
cp "$bin" "$carry/bin/"
cuda_lib="${CUDA_BACKEND:-$build/engine/backend/cuda/libsals_backend_cuda.so}"
[ -f "$cuda_lib" ] && cp "$cuda_lib" "$carry/bin/"
strip --strip-unneeded "$carry"/bin/*  # the working tree and the carry share 64 MiB
# A model in the working tree (not git-ignored) travels with it: refer to it, don't copy it.
model_abs="$(realpath "$model")"
if [[ "$model_abs" == "$PWD"/* ]] && ! git check-ignore -q "$model_abs"; then
  model_arg="${model_abs#"$PWD"/}"
else
  mkdir -p "$carry/model"
  cp -L "$model"/* "$carry/model/"
  model_arg="model"
fi
[ "$cases" = - ] || cp "$cases" "$carry/cases.jsonl"
if [ -n "${HAYSTACK:-}" ]; then gzip -9 -c "$HAYSTACK" > "$carry/corpus.txt.gz"; fi

# As tools/gpu/pack.sh: the GPU machine has glibc, libstdc++, libgcc_s, libz, libssl and CUDA;
# also protobuf 3.21 (libprotobuf.so.32, as Debian 12's), left behind to save 3 MB.
for b in "$carry"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
  sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      ld-linux* | libc.so* | libm.so* | libmvec.so* | libpthread.so* | libdl.so* | librt.so* | \
        libresolv.so* | libutil.so* | libstdc++.so* | libgcc_s.so* | libz.so* | libssl.so* | \
        libcrypto.so* | libcuda.so* | libcudart.so* | libcublas* | libnvrtc* | libnvJitLink* | \
        libprotobuf.so.32) ;;
      *) cp -L "$lib" "$carry/lib/" ;;
    esac
  done

# The CUDA backend (11.5 MB, mostly device code) travels xz-compressed (2.8 MB) when xz is here:
# with the demo model in the tree (47 MiB tracked) and a haystack, it would not fit otherwise.
# run.sh unpacks it with python3's lzma.
if [ -f "$carry/bin/libsals_backend_cuda.so" ] && command -v xz > /dev/null; then
  xz -9 "$carry/bin/libsals_backend_cuda.so"
fi

cat > "$carry/run.sh" <<RUN
#!/usr/bin/env bash
# sals-retrieval on the carried cases (or the file SALS_CASES names); JSON and log in \$OUT (or
# here without \$OUT). Run from the repository root (a model in the working tree is named relative
# to it).
set -euo pipefail
here="\$(cd "\$(dirname "\$0")" && pwd)"
out="\${OUT:-\$here}"
cases="\${SALS_CASES:-\$here/cases.jsonl}"
model="$model_arg"
[ "\$model" = model ] && model="\$here/model"
lib="\$here/bin/libsals_backend_cuda.so"
if [ -f "\$lib.xz" ] && [ ! -f "\$lib" ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "\$lib.xz" "\$lib"
fi
export LD_LIBRARY_PATH="\$here/lib:/usr/local/cuda/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
"\$here/bin/sals-retrieval" --model "\$model" --cases "\$cases" \\
  --json "\$out/retrieval.json" "\$@" 2>&1 | tee "\$out/retrieval.log"
RUN
chmod +x "$carry/run.sh"
echo "packed $carry: $(du -sh "$carry" | cut -f1) ($(ls "$carry/lib" | wc -l) libraries)"
