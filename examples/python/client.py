#!/usr/bin/env python3
"""Streams a completion from sals-server.

    pip install -r examples/python/requirements.txt
    python3 examples/python/client.py --server 127.0.0.1:50051 --prompt "Once upon a time"

The stubs are generated from proto/sals/v1/generate.proto at start-up (grpcio-tools), so the
example needs nothing but the repository.
"""
import argparse
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    out = tempfile.mkdtemp(prefix="sals_stubs_")
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}",
            str(PROTO_ROOT / "sals/v1/generate.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from sals.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402
    return generate_pb2, generate_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--policy", choices=["default", "dense", "sals-25", "sals-12.5"],
                        default="default")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    args = parser.parse_args()

    pb, pb_grpc = load_stubs()
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(args.server))
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout)
    print(f"# {info.model} ({info.architecture}), KV {info.kv_cache.format}: "
          f"{info.kv_cache.bytes_per_token:.0f} B/token vs "
          f"{info.kv_cache.dense_fp16_bytes_per_token:.0f} dense", file=sys.stderr)

    presets = {"default": pb.AttentionPolicy.PRESET_UNSPECIFIED,
               "dense": pb.AttentionPolicy.PRESET_DENSE,
               "sals-25": pb.AttentionPolicy.PRESET_SALS_25,
               "sals-12.5": pb.AttentionPolicy.PRESET_SALS_12_5}
    request = pb.GenerateRequest(
        text=args.prompt,
        sampling=pb.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature),
        attention=pb.AttentionPolicy(preset=presets[args.policy]))
    try:
        for response in stub.Generate(request, timeout=args.timeout):
            if response.HasField("chunk"):
                print(response.chunk.text, end="", flush=True)
            else:
                done = response.complete
                print(f"\n# finish: {pb.FinishReason.Name(done.finish_reason)}, "
                      f"{done.usage.prompt_tokens} prompt + {done.usage.completion_tokens} "
                      f"completion tokens, TTFT {done.timings.time_to_first_token_ms:.1f} ms, "
                      f"total {done.timings.total_ms:.1f} ms", file=sys.stderr)
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
