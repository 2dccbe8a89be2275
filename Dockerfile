# sals-serve container image: sals-server (CUDA backend), sals-calibrate (and its default
# calibration corpus, /opt/sals/share/calibration.jsonl), sals-capacity, sals-loadtest and
# sals-health-probe.
#
#   docker build -t sals-serve:0.1.0 .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 -v /path/to/model:/models:ro sals-serve:0.1.0
#
# Why Debian 12 and not NVIDIA's nvidia/cuda images (Ubuntu): the build and its dependencies are
# exactly what CI installs and builds, through the same scripts (tools/install_deps.sh, which
# targets Debian 12's packages, and tools/ci/build.sh); NVIDIA publishes its CUDA toolkit and
# runtime libraries for Debian 12 as an apt repository, so the builder stage is Debian 12 plus
# CUDA's compiler and development libraries, and the runtime stage Debian 12 slim plus CUDA's
# runtime libraries (cudart, cuBLAS). The GPU driver (libcuda) comes from the host through the
# NVIDIA Container Toolkit at run time. tools/ci/check_dockerfile.py (in CI) checks that both
# stages call those scripts, that the runtime stage installs a package for every shared library
# the copied binaries load, and that ports, user and paths agree with deploy/.
ARG DEBIAN_IMAGE=debian:12-slim
ARG CUDA_REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
ARG CUDA_VERSION=13-0

# ---- build: Debian 12 + CUDA toolkit, then CI's own install and build scripts ----
FROM ${DEBIAN_IMAGE} AS build
ARG CUDA_REPO
ARG CUDA_VERSION
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
    && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
       "cuda-nvcc-${CUDA_VERSION}" "cuda-cudart-dev-${CUDA_VERSION}" "libcublas-dev-${CUDA_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH}
WORKDIR /src
# The dependency layer is cached until the script changes.
COPY tools/install_deps.sh tools/install_deps.sh
RUN bash tools/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash tools/ci/build.sh build -DSALS_BUILD_TESTS=OFF -DSALS_WITH_CUDA=ON \
    && test -x build/server/sals-server \
    && test -f build/engine/backend/cuda/libsals_backend_cuda.so

# ---- corpus: sals-calibrate's default calibration text, from Debian-packaged English text ----
FROM ${DEBIAN_IMAGE} AS corpus
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY tools/train/make_corpus.py tools/train/make_corpus.py
COPY tools/calibrate/make_calibration_corpus.py tools/calibrate/make_calibration_corpus.py
# The `bible` program of bible-kjv (run from the unpacked package) needs libreadline8.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 libreadline8 \
    && python3 tools/calibrate/make_calibration_corpus.py --out /src/corpus --cache /tmp/debs \
    && rm -rf /tmp/debs /var/lib/apt/lists/*

# ---- runtime: Debian 12 slim + CUDA runtime libraries + the libraries the binaries load ----
FROM ${DEBIAN_IMAGE} AS runtime
ARG CUDA_REPO
ARG CUDA_VERSION
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
    && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
       "cuda-cudart-${CUDA_VERSION}" "libcublas-${CUDA_VERSION}" \
       libabsl20220623 libc-ares2 libcivetweb1 libgomp1 libgrpc++1.51 libgrpc29 libpcre2-8-0 \
       libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprotobuf32 libre2-9 libssl3 \
       libstdc++6 libyaml-cpp0.7 \
    && apt-get purge -y -qq curl && apt-get autoremove -y -qq \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sals \
    && useradd --system --uid 10001 --gid sals --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sals
# The CUDA backend sits beside sals-server, where the engine's loader looks first.
COPY --from=build /src/build/server/sals-server /src/build/loadtest/sals-loadtest \
     /src/build/loadtest/sals-health-probe /src/build/tools/calibrate/sals-calibrate \
     /src/build/tools/capacity/sals-capacity \
     /src/build/engine/backend/cuda/libsals_backend_cuda.so /opt/sals/bin/
COPY configs/server.yaml /etc/sals/server.yaml
COPY --from=corpus /src/corpus/calibration.jsonl /src/corpus/manifest.json /opt/sals/share/
ENV PATH=/opt/sals/bin:${PATH} \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# gRPC (sals.v1.Generation, grpc.health.v1, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
# The model directory (Hugging Face layout plus sals_calibration.safetensors).
VOLUME /models
# Loading and warming a large model takes minutes: failures count only after the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["sals-health-probe", "--addr", "127.0.0.1:50051", "--timeout-s", "4", "--quiet"]
ENTRYPOINT ["sals-server"]
CMD ["--config", "/etc/sals/server.yaml", "--model", "/models", "--set", "backend.type=cuda"]
