"""host.isolation and host.reboot: optional kernel command-line isolation of the vCPU CPUs.

With `tuning.kernel_isolation: true` the kernel keeps its own work off every CPU a vCPU is pinned
to: `isolcpus=managed_irq,domain,<cpus>` (no load balancing, no managed IRQs there),
`nohz_full=<cpus>` (no scheduler tick while one task runs) and `rcu_nocbs=<cpus>` (RCU callbacks
elsewhere). The cgroup confinement of host.tune needs no reboot; this does, which is why it is a
choice and why the reboot is a step of its own that only runs with --reboot.

host.isolation writes a GRUB drop-in (/etc/default/grub.d/, read by update-grub on Debian and
Ubuntu) and regenerates grub.cfg; it verifies the drop-in, and reports a command line that does
not carry the arguments yet as a warning naming the reboot. host.reboot, with --reboot, reboots the
hypervisor when the running kernel lacks them, waits for it to come back (a new boot_id) and checks
/proc/cmdline; without the flag it only says that a reboot is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.confine import vcpu_cpus
from lib.cpuset import format_cpulist
from lib.facts.read import cat_if_present
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import Host
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, root_prefix, sh, write_file
from lib.steps.base import Await, Plan, Step, StepMismatch, Target

DROPIN = "/etc/default/grub.d/90-numa-k3s.cfg"
UPDATE_GRUB = "/usr/sbin/update-grub"
_HEADER = "# Managed by numa-k3s runbooks (step host.isolation); changes here are overwritten.\n"


def isolation_args(host: Host) -> tuple[str, ...]:
    """The kernel arguments for the inventory (none when isolation is off or no vCPU is pinned)."""
    cpus = vcpu_cpus(host)
    if not host.tuning.kernel_isolation or not cpus:
        return ()
    listed = format_cpulist(cpus)
    return (f"isolcpus=managed_irq,domain,{listed}", f"nohz_full={listed}", f"rcu_nocbs={listed}")


def dropin_content(host: Host) -> str:
    return (f"{_HEADER}# The vCPU CPUs, isolated from the kernel's own work (tuning.kernel_isolation).\n"
            f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {" ".join(isolation_args(host))}"\n')


def missing_args(host: Host, cmdline: str) -> tuple[str, ...]:
    running = set(cmdline.split())
    return tuple(a for a in isolation_args(host) if a not in running)


@dataclass(frozen=True)
class BootFacts:
    dropin: str | None  # None: no drop-in there
    cmdline: str
    boot_id: str
    update_grub: bool


def boot_facts_command(sysroot: str) -> Command:
    dropin = cat_if_present(f'"$r"{DROPIN}')
    return sh("; ".join([
        "r={root}", f'if [ -e "$r"{DROPIN} ]; then {section("dropin")}; {dropin}; fi',
        section("cmdline"), 'cat "$r"/proc/cmdline',
        section("boot_id"), 'cat "$r"/proc/sys/kernel/random/boot_id',
        section("tools"), f'[ -x "$r"{UPDATE_GRUB} ] && echo update-grub', "true",
    ]), root="" if sysroot in ("", "/") else sysroot, sudo=False, timeout=60,
        why="the boot loader drop-in, the running kernel's command line, the boot id")


def parse_boot_facts(stdout: str) -> BootFacts:
    parts = split_sections(stdout)
    dropin = parts.get("dropin")
    return BootFacts(None if dropin is None else dropin + "\n", parts.get("cmdline", "").strip(),
                     parts.get("boot_id", "").strip(), "update-grub" in parts.get("tools", ""))


def _regenerate(root: str) -> str:
    # Under a sysroot (tests) the host's own grub.cfg is not this tree's: nothing to regenerate.
    return "" if root else f" && {UPDATE_GRUB}"


class _BootStep(Step[BootFacts]):
    """Reads the boot facts: the drop-in, /proc/cmdline, the boot id, update-grub."""

    targets = "hypervisor"

    def facts_command(self, target: Target) -> Command:
        return boot_facts_command(target.loaded.host.sysroot)

    def parse(self, target: Target, answers: Answers) -> BootFacts:
        return parse_boot_facts(answers.stdout())


class HostIsolation(_BootStep):
    name = "host.isolation"
    summary = ("tuning.kernel_isolation: isolcpus/nohz_full/rcu_nocbs on the vCPU CPUs in a GRUB drop-in, "
               "grub.cfg regenerated; the running kernel gets them at the next reboot (host.reboot --reboot)")

    def plan(self, target: Target, facts: BootFacts | None) -> Plan:
        host = target.loaded.host
        root = root_prefix(host.sysroot)
        want = dropin_content(host) if isolation_args(host) else None
        if facts is not None and facts.dropin == want:
            return Plan(reason="kernel isolation off: no drop-in" if want is None else
                        f"the boot loader drop-in {DROPIN} already carries {' '.join(isolation_args(host))}")
        if facts is None and want is None:
            return Plan(reason="kernel isolation off: nothing to write (online, a drop-in an earlier run left is "
                               "removed)")
        if facts is not None and not facts.update_grub:
            raise StepMismatch([Check("update-grub", "installed", "missing", False)], exit_code=4, message=(
                f"{target.loaded.name}: tuning.kernel_isolation needs GRUB's update-grub ({UPDATE_GRUB}, Debian's "
                "grub2-common) to change the kernel command line, and this host has none; nothing was changed: "
                "install it, or set tuning.kernel_isolation: false"))
        if want is None:
            return Plan((sh(f"rm -f {root}{DROPIN}{_regenerate(root)}", why=f"remove {DROPIN}"),),
                        f"kernel isolation off: remove {DROPIN} (the running kernel keeps it until a reboot)")
        write = write_file(root, DROPIN, want, before=facts.dropin if facts else None, then=_regenerate(root),
                           why="the kernel command line for the next boot")
        return Plan((write,), f"write {DROPIN} ({' '.join(isolation_args(host))}), regenerate grub.cfg; "
                              "effective at the next reboot (host.reboot --reboot)")

    def verify(self, target: Target, facts: BootFacts) -> list[Check]:
        host = target.loaded.host
        args = isolation_args(host)
        if not args:
            return [Check(f"boot loader drop-in {DROPIN}", "none (tuning.kernel_isolation off)",
                          "none" if facts.dropin is None else "present", facts.dropin is None)]
        missing = missing_args(host, facts.cmdline)
        pending = (f"not yet: {' '.join(missing)} missing; reboot: invoke step host.reboot "
                   f"--host={target.loaded.name} --reboot")
        return [
            Check(f"boot loader drop-in {DROPIN}", " ".join(args),
                  "as the spec says" if facts.dropin == dropin_content(host) else
                  ("missing" if facts.dropin is None else "differs"), facts.dropin == dropin_content(host)),
            cmdline_check(host, facts.cmdline) if not missing else
            Check.warn("kernel command line (running)", " ".join(args), pending),
        ]


class _Rebooted(_BootStep):
    """The hypervisor came back from its reboot: a new boot_id, and the isolation arguments running."""

    name = "host.reboot (back)"
    summary = "a new boot id and the kernel command line"
    converge = True

    def __init__(self, before: str) -> None:
        self.before = before

    def plan(self, target: Target, facts: BootFacts | None) -> Plan:
        return Plan(reason="checks only")

    def verify(self, target: Target, facts: BootFacts) -> list[Check]:
        return reboot_checks(target.loaded.host, facts, self.before)


def cmdline_check(host: Host, cmdline: str) -> Check:
    """The running kernel's command line against the isolation arguments: passed or failed."""
    missing = missing_args(host, cmdline)
    return Check("kernel command line (running)", " ".join(isolation_args(host)),
                 "carries them" if not missing else f"lacks {' '.join(missing)}", not missing)


def reboot_checks(host: Host, facts: BootFacts, before: str) -> list[Check]:
    return [Check("rebooted (boot_id)", f"not {before[:8]}", facts.boot_id[:8] or "unknown",
                  bool(facts.boot_id) and facts.boot_id != before),
            cmdline_check(host, facts.cmdline)]


class HostReboot(_BootStep):
    name = "host.reboot"
    summary = ("--reboot only: reboot the hypervisor when its running kernel lacks host.isolation's arguments, "
               "wait for it, verify /proc/cmdline")

    def plan(self, target: Target, facts: BootFacts | None) -> Plan:
        host, name = target.loaded.host, target.loaded.name
        if not isolation_args(host):
            return Plan(reason="kernel isolation off: no reboot needed")
        if facts is None:
            return Plan(reason="offline: a reboot is decided from the running kernel's command line")
        missing = missing_args(host, facts.cmdline)
        if not missing:
            return Plan(reason="the running kernel carries the isolation arguments: no reboot needed")
        if not target.flags.reboot:
            return Plan(reason=f"{name} needs a reboot for {' '.join(missing)}", warnings=(
                f"{name}: the kernel isolation takes effect only after a reboot, which also stops every VM "
                f"on it; nothing was rebooted: invoke step host.reboot --host={name} --reboot",))
        # Detached, so the command returns before sshd goes down with the host.
        reboot = sh("nohup sh -c 'sleep 2; systemctl reboot || reboot' >/dev/null 2>&1 &", timeout=30,
                    why=f"reboot {name} for {' '.join(missing)} (every VM on it stops)")
        return Plan((reboot, Await(_Rebooted(facts.boot_id), f"{name} is back with the new command line")),
                    f"reboot {name}: its running kernel lacks {' '.join(missing)}")

    def verify(self, target: Target, facts: BootFacts) -> list[Check]:
        host = target.loaded.host
        if not isolation_args(host):
            return [Check.evidence("kernel isolation", "off (tuning.kernel_isolation)")]
        missing = missing_args(host, facts.cmdline)
        if missing and not target.flags.reboot:
            return [Check.warn("kernel command line (running)", " ".join(isolation_args(host)),
                               f"lacks {' '.join(missing)}: reboot with --reboot")]
        return [cmdline_check(host, facts.cmdline)]
