#!/usr/bin/env python3
"""Compares `metatopia-trace` output with tests/determinism/golden.toml.

usage: compare.py GOLDEN TRACE [REFERENCE_TRACE]

Every traced scenario must give each golden (ticks, hash) checkpoint; a
scenario of the golden file that was neither traced nor skipped is an
error. With REFERENCE_TRACE (the same runner built natively), a scenario
that differs also names its first tick whose hash differs from the
reference's. Exit status 1 on any difference.
"""
import sys
import tomllib


def read_trace(path):
    traces, skipped = {}, {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == "trace" and len(w) == 4:
                traces.setdefault(w[1], {})[int(w[2])] = w[3]
            elif w[0] == "skip":
                skipped[w[1]] = " ".join(w[2:])
    return traces, skipped


def main():
    golden = tomllib.load(open(sys.argv[1], "rb"))
    traces, skipped = read_trace(sys.argv[2])
    reference = read_trace(sys.argv[3])[0] if len(sys.argv) > 3 else None
    failed = False
    for name in sorted(golden):
        want = {int(t): h for t, h in golden[name].items()}
        if name in skipped:
            print(f"{name}: skipped ({skipped[name]})")
            continue
        got = traces.get(name)
        if got is None:
            print(f"{name}: MISSING: not in the trace")
            failed = True
            continue
        bad = [t for t in sorted(want) if got.get(t) != want[t]]
        if not bad:
            print(f"{name}: matches golden.toml at ticks {sorted(want)}")
            continue
        failed = True
        t = bad[0]
        print(f"{name}: DIFFERS from golden.toml at tick {t}: golden {want[t]}, got {got.get(t, 'absent')}")
        if reference is not None and name in reference:
            ref = reference[name]
            first = next((u for u in sorted(set(ref) | set(got)) if ref.get(u) != got.get(u)), None)
            if first is None:
                print(f"  the native build of the same runner gives the same trace (so golden.toml is stale?)")
            else:
                print(f"  first tick differing from the native build: {first}: native {ref.get(first, 'absent')}, got {got.get(first, 'absent')}")
    for name in sorted(set(traces) - set(golden)):
        print(f"{name}: traced but not in golden.toml")
        failed = True
    sys.exit(1 if failed else 0)


main()
