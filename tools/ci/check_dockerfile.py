#!/usr/bin/env python3
"""Keeps the Dockerfile honest where no Docker engine runs (CI): it must build with the scripts
CI uses, and its runtime stage must hold every shared library the copied binaries load.

Checks, against the repository and a finished Release build (--build-dir):
- the build stage runs tools/install_deps.sh and tools/ci/build.sh, and so does
  tools/run_tests.sh (CI);
- base images are tagged (no implicit or explicit :latest);
- every COPY source exists (sources in the repository, /src/build/... in the build directory);
  a file copied from another stage (the default calibration corpus) lies in a folder a RUN of
  that stage writes with `--out`;
- the runtime stage installs, for every library `ldd` resolves for the copied binaries, the
  Debian package that owns it (CUDA's libraries: NVIDIA's package for that soname);
- the runtime stage runs as a non-root user, the one deploy/kubernetes/deployment.yaml runs as;
  EXPOSE is the gRPC and metrics ports of configs/server.yaml and the Deployment; VOLUME is the
  Deployment's model mount; HEALTHCHECK asks sals-health-probe on the gRPC port.
"""
import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from check_report import fail, failures, ok

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("tools/install_deps.sh", "tools/ci/build.sh")
# Packages every Debian 12 image has (Priority: required).
BASE_PACKAGES = {"libc6", "libgcc-s1", "zlib1g"}
# NVIDIA's runtime packages, by soname (CUDA_VERSION from the Dockerfile's ARG).
CUDA_SONAMES = {r"libcudart\.so": "cuda-cudart-{v}", r"libcublas(Lt)?\.so": "libcublas-{v}"}
# Comes with the GPU driver through the NVIDIA Container Toolkit.
DRIVER_SONAMES = (r"libcuda\.so", r"libnvidia-")


def parse(path):
    """[(stage name, instruction, arguments)] with continuations joined, and the global ARGs."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    instructions, global_args, stage = [], {}, None
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            stage = m.group(2) or f"stage{len(instructions)}"
        elif keyword == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            global_args[name] = default
        instructions.append((stage, keyword, rest.strip()))
    return instructions, global_args


def expand(text, args):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
                  text)


def owning_packages(libraries):
    """library path -> the Debian package that owns it (one dpkg call: each one reads the whole
    package database). /lib and /usr/lib are the same folder (merged /usr); dpkg knows one."""
    candidates = {}
    for library in libraries:
        candidates[library] = library
        if library.startswith("/usr/lib/"):
            candidates[library[len("/usr"):]] = library
        elif library.startswith("/lib/"):
            candidates["/usr" + library] = library
    run = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True)
    owners = {}
    for line in run.stdout.splitlines():
        package, _, path = line.partition(": ")
        if path in candidates:
            owners[candidates[path]] = package.split(":")[0]
    return owners


def needed_packages(binaries, cuda_version):
    """package -> the libraries that need it, from ldd of every binary."""
    resolved_by_soname = {}
    for binary in binaries:
        run = subprocess.run(["ldd", binary], capture_output=True, text=True)
        for line in run.stdout.splitlines():
            m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
            if m and not any(re.match(p, m.group(1)) for p in DRIVER_SONAMES):
                resolved_by_soname[m.group(1)] = m.group(2)
    owners = owning_packages([str(Path(r).resolve()) for r in resolved_by_soname.values()
                              if r.startswith("/")])
    needed = {}
    for soname, resolved in sorted(resolved_by_soname.items()):
        package = next((pkg.format(v=cuda_version) for pattern, pkg in CUDA_SONAMES.items()
                        if re.match(pattern, soname)), None)
        if package is None and resolved.startswith("/"):
            package = owners.get(str(Path(resolved).resolve()))
        if package is None:
            fail(f"a copied binary loads {soname} ({resolved}), which no known package owns")
            continue
        needed.setdefault(package, set()).add(soname)
    return needed


def installed_packages(runs, args):
    packages = set()
    for run in runs:
        for command in expand(run, args).split("&&"):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                packages |= {w for w in words[words.index("install") + 1:]
                             if not w.startswith("-")}
    return packages


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, required=True,
                        help="a finished Release build (tools/ci/build.sh)")
    args = parser.parse_args()
    build_dir = args.build_dir.resolve()
    instructions, global_args = parse(ROOT / "Dockerfile")
    stages = list(dict.fromkeys(stage for stage, _, _ in instructions if stage))
    if len(stages) < 2:
        fail(f"expected a build and a runtime stage, found {stages}")
        return 1
    build_stage, runtime_stage = stages[0], stages[-1]

    def of(stage, keyword):
        return [rest for s, k, rest in instructions if s == stage and k == keyword]

    # Base images.
    for stage, keyword, rest in instructions:
        if keyword == "FROM":
            image = expand(rest.split()[0], global_args)
            if ":" not in image.split("/")[-1] or image.endswith(":latest"):
                fail(f"FROM {image}: pin a tag")
            else:
                ok(f"stage {stage} builds FROM {image}")

    # The same scripts as CI.
    build_runs = " ".join(of(build_stage, "RUN"))
    ci = (ROOT / "tools" / "run_tests.sh").read_text()
    for script in SCRIPTS:
        in_docker = re.search(rf"\bbash {re.escape(script)}\b", build_runs)
        in_ci = re.search(rf"^[^#]*\bbash {re.escape(script)}\b", ci, re.MULTILINE)
        if in_docker and in_ci:
            ok(f"the build stage and tools/run_tests.sh both run {script}")
        else:
            fail(f"{script}: run by the build stage: {bool(in_docker)}, by CI: {bool(in_ci)}")

    # COPY sources.
    cuda_built = (build_dir / "engine" / "backend" / "cuda" / "libsals_backend_cuda.so").exists()
    copied_binaries = []
    for stage in stages:
        for rest in of(stage, "COPY"):
            words = shlex.split(rest)
            from_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                if from_stage is not None and from_stage not in (build_stage, None):
                    written = [m.group(1).rstrip("/") for run in of(from_stage, "RUN")
                               for m in re.finditer(r"--out\s+(\S+)", run)]
                    if any(source.startswith(w + "/") for w in written):
                        ok(f"COPY --from={from_stage} {source}: written by that stage (--out)")
                    else:
                        fail(f"COPY --from={from_stage} {source}: no RUN of that stage writes it "
                             f"(--out folders: {written})")
                    continue
                if from_stage is None:
                    path = ROOT / source
                elif source.startswith("/src/build/"):
                    path = build_dir / source[len("/src/build/"):]
                    copied_binaries.append(path)
                else:
                    path = ROOT / source[len("/src/"):]
                if path.exists():
                    ok(f"COPY {source} exists ({path.relative_to(ROOT)})")
                elif path.name == "libsals_backend_cuda.so" and not cuda_built:
                    print(f"skip COPY {source}: this build has no CUDA (no nvcc)")
                else:
                    fail(f"COPY {source}: {path} does not exist")

    # Runtime libraries.
    cuda_version = global_args.get("CUDA_VERSION", "")
    present = [p for p in copied_binaries if p.exists() and p.read_bytes()[:4] == b"\x7fELF"]
    needed = needed_packages(present, cuda_version)
    installed = installed_packages(of(runtime_stage, "RUN"), global_args)
    missing = {pkg: libs for pkg, libs in needed.items()
               if pkg not in installed and pkg not in BASE_PACKAGES}
    for package, libs in sorted(missing.items()):
        fail(f"the runtime stage lacks {package} (for {', '.join(sorted(libs))})")
    if not missing:
        ok(f"the runtime stage installs all {len(needed)} packages the {len(present)} copied "
           f"binaries load ({', '.join(sorted(needed))})")
    cuda_packages = {pkg.format(v=cuda_version) for pkg in CUDA_SONAMES.values()}
    unused = installed - set(needed) - cuda_packages - {"ca-certificates", "curl"}
    if unused:
        print(f"info runtime packages no copied binary loads: {', '.join(sorted(unused))}")

    # Runtime settings against deploy/ and the server's defaults.
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = yaml.safe_load((ROOT / "configs" / "server.yaml").read_text())["server"]
    default_ports = {int(defaults["listen"].rsplit(":", 1)[1]),
                     int(defaults["metrics_listen"].rsplit(":", 1)[1])}
    users = of(runtime_stage, "USER")
    user = users[-1].split(":")[0] if users else "root"
    if user in ("root", "0"):
        fail("the runtime stage runs as root")
    elif str(pod["securityContext"].get("runAsUser")) != user:
        fail(f"USER {user} differs from the Deployment's runAsUser")
    else:
        ok(f"runs as non-root user {user}, as the Deployment does")
    exposed = {int(p.split("/")[0]) for rest in of(runtime_stage, "EXPOSE") for p in rest.split()}
    if exposed == set(ports.values()) == default_ports:
        ok(f"EXPOSE {sorted(exposed)}: the server's default ports and the Deployment's")
    else:
        fail(f"EXPOSE {sorted(exposed)}, Deployment {ports}, server defaults {default_ports}")
    volumes = {v.strip('[]" ') for rest in of(runtime_stage, "VOLUME") for v in rest.split()}
    model_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models")
    if model_mount in volumes:
        ok(f"VOLUME {model_mount} is the Deployment's model mount")
    else:
        fail(f"VOLUME {sorted(volumes)} lacks the Deployment's model mount {model_mount}")
    health = " ".join(of(runtime_stage, "HEALTHCHECK"))
    if "sals-health-probe" in health and f"127.0.0.1:{ports.get('grpc')}" in health:
        ok("HEALTHCHECK asks grpc.health.v1 through sals-health-probe on the gRPC port")
    else:
        fail(f"HEALTHCHECK does not run sals-health-probe on the gRPC port: {health}")
    entry = " ".join(of(runtime_stage, "ENTRYPOINT"))
    if "sals-server" not in entry:
        fail(f"ENTRYPOINT {entry} is not sals-server")

    if failures:
        print(f"check_dockerfile: {len(failures)} failed")
        return 1
    print("check_dockerfile: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
