"""status.vms: each VM's live state, pins and memory binding in one libvirt read (read-only).

Like vms.start's verification without the SSH probe into the guest, so `invoke status` answers in
about a second: state, the live vCPU and emulator pins, and the live numatune, per VM.
"""

from __future__ import annotations

from lib.domain import LiveDomain, live_checks, live_domain
from lib.remote import Session
from lib.results import Check
from lib.steps.base import Plan, Step, Target


class StatusVms(Step):
    name = "status.vms"
    summary = "each VM's live state, vCPU/emulator pins and memory binding (libvirt API; read-only)"
    targets = "vms"

    def gather(self, target: Target, session: Session) -> LiveDomain | None:
        assert target.vm is not None
        return live_domain(session.live_domain(target.loaded.host.libvirt_uri, target.vm.name))

    def plan(self, target: Target, facts: LiveDomain | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: LiveDomain | None) -> list[Check]:
        assert target.vm is not None
        if facts is None:
            return [Check("state", "running", "not defined", False)]
        return live_checks(target.vm, facts)
