"""Start-up time of the command line: ``--version`` and a usage error (run by hand).

    python benchmarks/bench_cli_startup.py [--repeats 15]

Both must answer in well under a second (target: ``--version`` < 0.5 s):
the parser imports nothing heavy, nilearn is loaded only once the command
line is valid. For comparison it also times ``python -c pass`` (the
interpreter alone) and ``import nilearn.glm`` (what the CLI used to pay).
Prints the median and the worst wall time of each.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def _time(command, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    app = shutil.which("bids_group_app") or sys.exit("bids_group_app is not on PATH (pip install . first)")
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("bids_group_app --version", [app, "--version"]),
        ("bids_group_app usage error (--alpha 2)", [app, "ds", "out", "group", "--alpha", "2"]),
        ("bids_group_app unknown level (exit 17)", [app, "ds", "out", "banana"]),
        ("python -c 'import nilearn.glm'", [sys.executable, "-c", "import nilearn.glm"]),
    ]
    print(f"| command | median s | worst s |  (n = {args.repeats})")
    print("|---|---:|---:|")
    for label, command in cases:
        median, worst = _time(command, args.repeats)
        print(f"| {label} | {median:.3f} | {worst:.3f} |")


if __name__ == "__main__":
    main()
