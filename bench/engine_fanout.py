"""This engine's fan-out run as one command: load hosts/*.yaml, bios.check and host.tune verified on all.

The same code path as tests/reliability/test_scale.py (tests/harness/fanout.py: one verify-mode Engine
run, as `invoke verify.bios` and `invoke verify.tuning` do). Prints its own phases as JSON on stdout:
imports (this script's), and the run (inventory load and validation, SSH, steps, run records).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.runner import exit_code, failure_text  # noqa: E402
from tests.harness.fanout import run_fanout  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts-dir", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the run to this file")
    args = parser.parse_args()
    imported = time.perf_counter()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    runs = run_fanout(args.hosts_dir, args.runs_dir)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    done = time.perf_counter()
    code = exit_code(runs)
    if code:
        print(failure_text(runs), file=sys.stderr)
    print(json.dumps({"imports": imported - START, "run": done - imported, "hosts": len(runs)}))
    return code


if __name__ == "__main__":
    sys.exit(main())
