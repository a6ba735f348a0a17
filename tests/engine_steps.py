"""Test-only steps that drive the engine through its failure paths over real sshd hosts.

Each step keeps its state in files under its WorldFlags' state (a test's tmp dir, reached over
SSH), so the test can read what really ran on the "host".
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from lib.reads import Answers, Ask, Reads
from lib.results import Check
from lib.shell import Command, Secret, sh
from lib.steps.base import AnyStep, Plan, Step, Target
from lib.transport import CmdResult
from tests.harness.world import world_flags


def _state(target: Target, name: str) -> str:
    return f"{world_flags(target).state}/{target.name}.{name}"


class Mark(Step[list[str]]):
    """Appends its name to <target>.ran once; ok when already there. The basis of resume tests."""

    name = "test.mark"
    summary = "append a marker"

    def facts_command(self, target: Target) -> Command:
        return sh("cat {f} 2>/dev/null; true", f=_state(target, "ran"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> list[str]:
        return answers.stdout().split()

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if facts and self.name in facts:
            return Plan(reason=f"{self.name} already marked")
        return Plan((sh("echo {n} >> {f}", n=self.name, f=_state(target, "ran"), sudo=False),), "mark")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("marker", self.name, " ".join(facts) or "none", self.name in facts)]


def mark_step(step_name: str) -> type[AnyStep]:
    return type(f"Mark_{step_name}", (Mark,), {"name": step_name})


class Flaky(Step[int]):
    """Fails with a transient exit code (75) twice, then succeeds: the transient policy retries."""

    name = "test.flaky"
    summary = "fails twice then succeeds"
    state = "tries"
    succeeds_at = 3  # the attempt that succeeds
    failure = 'echo "try $n: resource busy" >&2; exit 75'

    def facts_command(self, target: Target) -> Command:
        return sh("cat {f} 2>/dev/null || echo 0", f=_state(target, self.state), sudo=False)

    def parse(self, target: Target, answers: Answers) -> int:
        return int(answers.stdout().strip() or 0)

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if facts and facts >= self.succeeds_at:
            return Plan(reason="already succeeded")
        return Plan((sh('f={f}; n=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); echo $n > "$f"; '
                        f'[ $n -ge {self.succeeds_at} ] || {{{{ {self.failure}; }}}}',
                        f=_state(target, self.state), sudo=False),), "flaky write")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("tries", str(self.succeeds_at), str(facts), facts == self.succeeds_at)]


class LockBusy(Flaky):
    """Fails once as virsh does when libvirtd's domain job lock stays taken (exit 1), then succeeds."""

    name = "test.lockbusy"
    summary = "libvirt job lock busy once"
    state = "locktries"
    succeeds_at = 2
    failure = ('echo "error: Failed to mark domain vm1 as autostarted" >&2; '
               'echo "error: Timed out during operation: cannot acquire state change lock '
               '(held by monitor=remoteDispatchDomainCreate)" >&2; exit 1')


class Permanent(Step[None]):
    """Fails with exit 1: a permanent error, never retried."""

    name = "test.permanent"
    summary = "fails for good"

    def parse(self, target: Target, answers: Answers) -> None:
        return None

    def facts_command(self, target: Target) -> Command:
        return sh("true", sudo=False)

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan((sh('f={f}; echo x >> "$f"; echo "no such device: /dev/sdz" >&2; exit 1',
                        f=_state(target, "permanent"), sudo=False),), "always fails")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return []


class WrongValue(Step[str]):
    """Writes 1 where the spec wants 0: the verification after the step fails (exit 5)."""

    name = "test.wrong"
    summary = "verification fails"

    def facts_command(self, target: Target) -> Command:
        return sh("cat {f} 2>/dev/null || echo unset", f=_state(target, "value"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout().strip()

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan((sh("echo 1 > {f}", f=_state(target, "value"), sudo=False),), "write the value")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("numa_balancing", "0", str(facts), facts == "0")]


class Sleepy(Step[None]):
    """Sleeps on every guest at once, journalling start and end: parallel targets must overlap."""

    name = "test.sleepy"
    summary = "sleep 1 s on every guest"
    targets = "guests"

    def parse(self, target: Target, answers: Answers) -> None:
        return None

    def facts_command(self, target: Target) -> Command:
        return sh("true", sudo=False)

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan((sh("sleep 1", sudo=False),), "sleep")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("slept", "yes", "yes", True)]


TOKEN_VALUE = "K10-test-token-5f3a9c2e7b1d"  # noqa: S105 - the test secret that must never leak


class WithToken(Step[str]):
    """Uses a secret in a command, an upload, and echoes it back: it must show as *** everywhere."""

    name = "test.token"
    summary = "uses the cluster token"

    def facts_command(self, target: Target) -> Command:
        # Output is masked for known secrets, so a step compares a digest, never the value itself.
        return sh("sha256sum < {f} 2>/dev/null; true", f=_state(target, "token"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout().split()[0] if answers.stdout().strip() else ""

    def plan(self, target: Target, facts: Any | None) -> Plan:
        token = Secret(TOKEN_VALUE)
        return Plan((sh("printf '%s\\n' {t} > {f}; echo token is {t}; echo also {t} >&2", t=token,
                        f=_state(target, "token"), sudo=False),), "write the token")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        want = hashlib.sha256(f"{TOKEN_VALUE}\n".encode()).hexdigest()
        return [Check("token file sha256", want[:12], str(facts)[:12], facts == want)]


class WaitsForFile(Step[bool]):
    """Converges: the file appears after a few polls (the test's sleep hook creates it)."""

    name = "test.converge"
    summary = "wait for a file"
    converge = True

    def facts_command(self, target: Target) -> Command:
        return sh("test -e {f} && echo yes || echo no", f=_state(target, "ready"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> bool:
        return answers.stdout().strip() == "yes"

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan(reason="nothing to apply; waits") if facts else Plan(
            (sh("true", sudo=False),), "start waiting")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("ready file", "present", "present" if facts else "absent", bool(facts))]


class Hangs(Step[None]):
    """A command that outlives its timeout: retried as transient, then fails naming the timeout."""

    name = "test.hangs"
    summary = "sleeps past its timeout"

    def parse(self, target: Target, answers: Answers) -> None:
        return None

    def facts_command(self, target: Target) -> Command:
        return sh("true", sudo=False)

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan((sh("echo started >> {f}; sleep 30", f=_state(target, "hangs"), timeout=0.5, sudo=False),),
                    "hang")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return []


class DropsConnection(Step[str]):
    """First try: kills the sshd session serving it, so the connection drops mid-step. Second try
    (after the reconnect): records the host lock's content, to show the lock followed the new session."""

    name = "test.dropconn"
    summary = "drop the SSH connection once"

    def facts_command(self, target: Target) -> Command:
        return sh("cat {f} 2>/dev/null; true", f=_state(target, "lock-after"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout()

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if facts:
            return Plan(reason="already dropped once")
        walk = ('s=$$; while [ "$s" -gt 1 ] && [ "$(cat /proc/$s/comm)" != sshd ]; do '
                "s=$(cut -d' ' -f4 /proc/$s/stat); done")
        return Plan((sh('d={d}; if [ ! -e "$d" ]; then touch "$d"; ' + walk + '; kill -9 "$s"; sleep 5; fi; '
                        'cat {lock} > {f}; '
                        # the lock's session as it is now: the run closes it when it ends, so a test
                        # reading /proc afterwards would race its exit
                        'cat /proc/$(sed -n "s/.* session=\\([0-9]*\\)$/\\1/p" {lock})/comm > {g}',
                        d=_state(target, "dropped"), lock=target.loaded.host.lock_path,
                        f=_state(target, "lock-after"), g=_state(target, "lock-session-comm"), sudo=False),),
                    "drop the connection, then record the lock")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("lock recorded", "yes", "yes" if facts else "no", bool(facts))]


class TwoCommands(Step[bool]):
    """A 1 s command, then a marker: an interrupt during the first must keep the second from running."""

    name = "test.two"
    summary = "sleep 1 s, then write a marker"

    def facts_command(self, target: Target) -> Command:
        return sh("test -e {f} && echo done; true", f=_state(target, "two"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> bool:
        return answers.stdout().strip() == "done"

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if facts:
            return Plan(reason="marker present")
        return Plan((sh("touch {s}; sleep 1; echo first >> {f}", s=_state(target, "two-started"),
                        f=_state(target, "two-log"), sudo=False),
                     sh("touch {f}", f=_state(target, "two"), sudo=False)), "sleep, then mark")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("marker", "present", "present" if facts else "absent", bool(facts))]


class ReadsNumber(Step[int]):
    """Reads <target>.number with `grep -H` and parses it with int(), as fact parsers do: a garbage
    value raises the parser's own ValueError (the engine must turn it into this target's failure)."""

    name = "test.number"
    summary = "parse a number from a file"

    def facts_command(self, target: Target) -> Command:
        return sh("grep -H . {f}", f=_state(target, "number"), sudo=False)

    def parse(self, target: Target, answers: Answers) -> int:
        line = answers.stdout().strip()
        return int(line.split(":", 1)[1])

    def plan(self, target: Target, facts: Any | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("number", "a number", str(facts), True)]


class SharedRead(Step[int]):
    """Every VM asks the server one shared question (Command.shared), as the k3s steps ask for the
    node list: the server's <server>.reads counts how often it was really asked. With option
    "change", each VM then changes something, and its fresh read must not be the one from before."""

    name = "test.shared"
    summary = "one shared read of the server per step"
    targets = "vms"

    def reads(self, target: Target, got: Answers) -> Reads:
        assert target.peer is not None
        count = sh("echo x >> {f}; wc -l < {f}", f=f"{world_flags(target).state}/server.reads", sudo=False)
        return (Ask("count", target.peer, replace(count, shared=True)),)

    def parse(self, target: Target, answers: Answers) -> int:
        count = answers.peer("count")
        assert isinstance(count, CmdResult), count
        return int(count.stdout)

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if world_flags(target).change:
            return Plan((sh("true", sudo=False),), "change something")
        return Plan(reason="nothing to do")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        if world_flags(target).change:  # the answer read after the change, never the first one
            return [Check("read after the change", "a fresh read (> 1)", str(facts), facts > 1)]
        return [Check("read", "an answer", str(facts), True)]


ALL: tuple[type[AnyStep], ...] = (SharedRead, ReadsNumber, Flaky, LockBusy, Permanent, WrongValue, Sleepy, WithToken,
                               WaitsForFile, Hangs, DropsConnection, TwoCommands,
                               mark_step("test.a"), mark_step("test.b"), mark_step("test.c"))
REGISTRY: dict[str, type[AnyStep]] = {s.name: s for s in ALL}
