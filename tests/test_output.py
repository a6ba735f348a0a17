"""Terminal output: plain lines off a TTY, the live display on one, recap, verification table, plan."""

from __future__ import annotations

import io
import threading

from lib.output import Output, recap, verification_table
from lib.planview import block
from lib.results import Check, HostRun, StepResult
from lib.shell import Secret

T0 = 1_795_888_380.0


def result(host: str, step: str, target: str, status: str, seconds: float, **kw: object) -> StepResult:
    return StepResult(host, step, target, status, T0, T0 + seconds, **kw)  # type: ignore[arg-type]


def two_hosts() -> list[HostRun]:
    hv1 = HostRun("hv1", "r1", "provision", "apply", T0, T0 + 4.21, [
        result("hv1", "bios.check", "hv1", "ok", 0.31),
        result("hv1", "host.tune", "hv1", "changed", 1.2),
        result("hv1", "images.clone", "lab-vm1", "ok", 0.2),
        result("hv1", "images.clone", "lab-vm2", "ok", 0.9),
        result("hv1", "vms.define", "hv1", "skipped", 0.0, reason="--skip"),
    ])
    hv2 = HostRun("hv2", "r2", "provision", "apply", T0, T0 + 1.1, [
        result("hv2", "bios.check", "hv2", "ok", 0.25),
        result("hv2", "host.tune", "hv2", "ok", 0.4),
        result("hv2", "images.clone", "lab-vm1", "failed", 0.3, error="qemu-img: exit 1\nstderr"),
        result("hv2", "vms.define", "hv2", "skipped", 0.0, reason="an earlier step failed"),
        result("hv2", "vms.start", "hv2", "skipped", 0.0, reason="an earlier step failed"),
    ], exit_code=4)
    return [hv1, hv2]


def test_recap_lines() -> None:
    order = ["bios.check", "host.tune", "images.clone", "vms.define", "vms.start"]
    assert recap(two_hosts(), order).splitlines() == [
        "PLAY RECAP " + "*" * 69,
        "hv1        : ok=3  changed=1  failed=0  skipped=1   wall 4.21s",
        "hv2        : ok=2  changed=0  failed=1  skipped=2   wall 1.10s",
        "",
        "STEP TIMES (wall, slowest target)",
        "bios.check      0.31s",
        "host.tune       1.20s",
        "images.clone    0.90s",
    ]


def test_recap_shows_a_host_error_and_steps_outside_the_order() -> None:
    locked = HostRun("hypervisor-a", "r1", "provision", "apply", T0, T0 + 0.05,
                     error="host is locked by run 20261128T170000Z-ffff of bob\nsince 17:00", exit_code=6)
    adhoc = HostRun("hv2", "r2", "step", "apply", T0, T0 + 2, [result("hv2", "k3s.taints", "srv", "ok", 2.0)])
    assert recap([locked, adhoc], []).splitlines() == [
        "PLAY RECAP " + "*" * 69,
        "hypervisor-a : ok=0  changed=0  failed=0  skipped=0   wall 0.05s",
        "               host is locked by run 20261128T170000Z-ffff of bob",
        "hv2          : ok=1  changed=0  failed=0  skipped=0   wall 2.00s",
        "",
        "STEP TIMES (wall, slowest target)",
        "k3s.taints      2.00s",
    ]


def test_verification_table_lists_failed_checks_first() -> None:
    checks = (Check("thp_enabled", "always", "always", True), Check("numa_balancing", "0", "1", False))
    table = verification_table(result("hv1", "host.tune", "hv1", "failed", 1.0, checks=checks))
    assert table.splitlines() == [
        "  check           expected  found",
        "✗ numa_balancing  0         1",
        "✓ thp_enabled     always    always",
    ]


def test_plain_lines_one_per_finished_result() -> None:
    stream = io.StringIO()
    out = Output(stream, tty=False)
    out.step_started("hv1", "host.tune", "hv1")  # nothing yet: plain output reports results
    assert stream.getvalue() == ""
    out.step_done(result("hv1", "host.tune", "hv1", "changed", 0.42, reason="numa_balancing 1 -> 0\nmore"))
    out.step_done(result("hv1", "vms.define", "lab-vm1", "failed", 1.5, reason="r", error="virsh: exit 1\ntail",
                         warnings=("TCG: no vmx",)))
    out.message("done")
    out.close()
    assert stream.getvalue().splitlines() == [
        "hv1 | host.tune | hv1 | changed | 0.42s | numa_balancing 1 -> 0",
        "hv1 | vms.define | lab-vm1 | failed | 1.50s | virsh: exit 1",
        "hv1 | vms.define | lab-vm1 | WARNING | TCG: no vmx",
        "done",
    ]


def test_live_display_on_a_tty_does_not_crash_and_keeps_the_finished_lines() -> None:
    stream = io.StringIO()
    out = Output(stream, tty=True)
    out.host_started("hv1", 5)

    def host(name: str) -> None:
        for step in ("bios.check", "images.clone"):
            for target in ("lab-vm1", "lab-vm2"):
                out.step_started(name, step, target)
            for target in ("lab-vm1", "lab-vm2"):
                out.step_done(result(name, step, target, "ok", 0.1))

    threads = [threading.Thread(target=host, args=(h,)) for h in ("hv1", "hv2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.step_done(result("hv1", "vms.start", "hv1", "skipped", 0.0, reason="--skip"))
    out.message("note")
    out.close()
    out.close()  # idempotent
    text = stream.getvalue()
    assert "hv1 | images.clone | lab-vm2 | ok" in text and "hv2 | bios.check | lab-vm1 | ok" in text
    assert "note" in text
    # Every change is drawn at once (refresh=True), so each state of the host lines reached the stream.
    assert "hv1  ▸ images.clone  (2/5)  lab-vm1 ✓ lab-vm2 ✓" in text
    assert "hv2  ▸ bios.check  (1)  lab-vm1" in text  # no host_started for hv2: no total
    assert "hv1  ▸ vms.start  (3/5)  hv1 -" in text


def test_secrets_are_masked_in_every_output() -> None:
    value = Secret("tok-12345").reveal()
    stream = io.StringIO()
    out = Output(stream, tty=False)
    res = result("hv1", "k3s.server", "srv", "changed", 0.1, reason=f"token {value}",
                 planned=(f"k3s server --token {value}",),
                 checks=(Check("token", value, "x", False),))
    out.step_done(res)
    out.message(f"using {value}")
    run = HostRun("hv1", "r1", "provision", "plan", T0, T0 + 1, [res], error=f"lock {value}")
    texts = [stream.getvalue(), block(res), recap([run], []), verification_table(res)]
    for text in texts:
        assert "tok-12345" not in text and "***" in text
