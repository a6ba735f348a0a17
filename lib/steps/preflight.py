"""preflight.access: SSH works, root or passwordless sudo, the tools later steps call are installed."""

from __future__ import annotations

from dataclasses import dataclass

from lib.remote import CmdResult
from lib.results import Check
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, Target

TOOLS = ("virsh", "virt-install", "qemu-img", "genisoimage", "numastat")


@dataclass(frozen=True)
class AccessFacts:
    user: str
    sudo: bool
    tools: dict[str, str]  # tool -> path, "" when missing


def parse_access(stdout: str) -> AccessFacts:
    values: dict[str, str] = {}
    tools: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("tool:"):
            tools[key[5:]] = value
        else:
            values[key] = value
    return AccessFacts(values.get("user", "?"), values.get("sudo") == "yes", tools)


class PreflightAccess(Step):
    name = "preflight.access"
    summary = "ssh, root or passwordless sudo, required tools present (read-only)"
    mismatch_exit = 3

    def facts_command(self, target: Target) -> Command:
        return sh(
            'echo "user=$(id -un)"; '
            'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi; '
            'for t in {tools}; do echo "tool:$t=$(command -v "$t")"; done',
            tools=list(TOOLS), sudo=False, timeout=30, why="check access and tools")

    def parse(self, target: Target, result: CmdResult | None) -> AccessFacts:
        return parse_access(result.stdout if result else "")

    def plan(self, target: Target, facts: object | None) -> Plan:
        return Plan(reason="read-only check")

    def verify(self, target: Target, facts: AccessFacts) -> list[Check]:
        checks = [Check("root or passwordless sudo", "yes", "yes" if facts.sudo else f"no (user {facts.user})",
                        facts.sudo)]
        for tool in TOOLS:
            path = facts.tools.get(tool, "")
            checks.append(Check(f"tool {tool}", "installed", path or "missing", bool(path)))
        return checks
