"""Two commands timed against each other as whole processes: `python -m benchmarks.ab -n 4 --warmup 1 -- A -- B`.

They run in turn (A, B, A, B...) after the warm-up rounds, so that a noisy shared machine slows both alike; for
each the median wall time and peak RSS (of the process, as wait4 reports it) are printed, and the A/B ratio of
each pair: on a shared 2-core machine only ratios measured in one run compare.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Optional


def timed(command: list[str], timeout: float) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of `command`, which must exit 0."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout
    while (status := os.wait4(process.pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"error: {' '.join(command)} ran past {timeout:.0f} s")
        time.sleep(0.02)
    seconds = time.monotonic() - start
    _, code, usage = status
    process.returncode = os.waitstatus_to_exitcode(code)
    if process.returncode:
        raise SystemExit(f"error: {' '.join(command)} exited {process.returncode}:\n"
                         f"{process.stderr.read().decode(errors='replace')[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv.count("--") != 2:
        raise SystemExit("usage: python -m benchmarks.ab [-n N] [--warmup W] [--timeout S] -- A... -- B...")
    first = argv.index("--")
    second = argv.index("--", first + 1)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=4, help="timed pairs (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs first (default 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    args = parser.parse_args(argv[:first])
    commands = {"A": argv[first + 1:second], "B": argv[second + 1:]}
    for _ in range(args.warmup):
        for command in commands.values():
            timed(command, args.timeout)
    runs: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for _ in range(args.n):
        for name, command in commands.items():
            runs[name].append(timed(command, args.timeout))
    for name, command in commands.items():
        walls, peaks = zip(*runs[name])
        print(f"{name}: wall {statistics.median(walls):.1f} s, peak RSS {statistics.median(peaks):,.0f} MiB "
              f"(medians of {args.n}): {' '.join(command)}")
    ratios = [a[0] / b[0] for a, b in zip(runs["A"], runs["B"])]
    print(f"A/B wall: median {statistics.median(ratios):.3f}, {min(ratios):.2f}-{max(ratios):.2f} by pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
