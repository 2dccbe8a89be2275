"""The pass/fail lines the CI check scripts print, and the failures they collect (one list per
process, read at the end to set the exit status)."""

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def ok(message):
    print(f"ok   {message}")
