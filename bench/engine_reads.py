"""This engine doing the peer benchmark's work: 20 reads per host, a verification pass over N hosts.

The 20 reads of ../shared/bench/verify-20-reads.txt (copied in READS) travel as ONE batched command
per host, the way every step gathers its facts; the engine runs the hosts in parallel and writes
its run records, as `invoke verify.*` does.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.facts.sysfs import section, split_sections
from lib.inventory.load import load_inventory
from lib.output import Output
from lib.reads import Answers
from lib.results import Check
from lib.runbook import Runbook
from lib.runner import Engine, RunOptions, exit_code
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, Target

READS = (Path(__file__).resolve().parent / "reads.txt").read_text().splitlines()


class Reads(Step[dict[str, str]]):
    name = "bench.reads"
    summary = "the 20 reads of the peer benchmark, one batched command"

    def facts_command(self, target: Target) -> Command:
        # Each read in its own section; a failing read (test -e /dev/kvm) must not stop the rest.
        script = "; ".join(f"{section(f'r{i}')}; {read}" for i, read in enumerate(READS)) + "; true"
        return sh(script.replace("{", "{{").replace("}", "}}"), sudo=False, timeout=30)

    def parse(self, target: Target, answers: Answers) -> dict[str, str]:
        return split_sections(answers.stdout())

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: dict[str, str]) -> list[Check]:
        return [Check(read, "read", "read" if f"r{i}" in facts else "missing", f"r{i}" in facts)
                for i, read in enumerate(READS)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts-dir", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    args = parser.parse_args()
    hosts = list(load_inventory(args.hosts_dir).hosts.values())
    book = Runbook("bench", "", "20 reads", (Reads(),))
    runs = Engine(book, RunOptions(mode="verify", runs_dir=args.runs_dir), Output(io.StringIO(), tty=False)).run(hosts)
    return exit_code(runs)


if __name__ == "__main__":
    sys.exit(main())
