#!/usr/bin/env python3
"""Turns the "[record] {json}" lines of real_shape_parity_test's log into the record file that
tests/gpu/records/real_shape_parity.json holds (checked on the CPU by gpu_record_test).

Usage: parity_record.py --log real_shape_parity_test.log --gpu H100 --out real_shape_parity.json
       [--command "..."]
Every model/dtype pair of EXPECTED gets a record: one the log has no line for (the test stopped
early, or the generator did not write it) is recorded with "passed": false and a note. Standard
library only.
"""

import argparse
import datetime
import json
import sys

EXPECTED_MODELS = ("llama-3.1-8b", "llama-2-7b", "mistral-7b")
EXPECTED_DTYPES = ("bf16", "fp16")
PREFIX = "[record] "


def read_records(log_path):
    records = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(PREFIX):
                rec = json.loads(line[len(PREFIX):])
                records[(rec["model"], rec["dtype"])] = rec
    return records


def build(records, gpu, date, command):
    flat = []
    for model in EXPECTED_MODELS:
        for dtype in EXPECTED_DTYPES:
            rec = records.get((model, dtype))
            if rec is None:
                rec = {"model": model, "dtype": dtype, "passed": False,
                       "note": "no [record] line in the test log (not generated, or the run stopped)"}
            flat.append({**rec, "gpu": gpu, "date": date})
    extra = sorted(set(records) - {(m, d) for m in EXPECTED_MODELS for d in EXPECTED_DTYPES})
    flat += [{**records[k], "gpu": gpu, "date": date} for k in extra]
    return {
        "status": "ran",
        "what": "CUDA backend vs transformers (fp32, eager) on random-weight models of the real "
                "shapes, issue 16 item 3; tests/gpu/real_shape_parity_test.cc",
        "command": command,
        "passed": all(r.get("passed") is True for r in flat),
        "records": flat,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True)
    parser.add_argument("--gpu", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--command", default="bash .carry/verify.sh parity")
    parser.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
    args = parser.parse_args()
    record = build(read_records(args.log), args.gpu, args.date, args.command)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    for r in record["records"]:
        print(f"{r['model']} {r['dtype']}: passed={r.get('passed')} max_rel_error={r.get('max_rel_error')} "
              f"tolerance={r.get('tolerance')} greedy_steps_equal={r.get('greedy_steps_equal')} "
              f"near_ties={r.get('near_ties')}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
