"""The whole provision runbook on a private lab, broken on purpose (issue #8 items 2, 3, 4 and 6).

One lab per module, in order: a clean provision watched for the token, a second provision that
must change nothing, drift and a refused teardown that must not touch any image, then provisions
interrupted with SIGINT and with SIGKILL in every step and resumed, each compared with the clean
run's end state. Slow (real TCG guests): `make test-reliability`.
"""

from __future__ import annotations

import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from lib.records import read_journal
from tests.harness.guest import build_guest
from tests.harness.sshd import SshdFarm
from tests.inventory_helpers import REPO
from tests.reliability.lab import HOST, Lab, remove_crashed_labs, sha, virsh, wait_for_line

pytestmark = pytest.mark.slow

# The provision runbook's steps, in its order: every one of them is interrupted below.
STEPS = tuple(yaml.safe_load((REPO / "runbooks" / "provision.yaml").read_text())["steps"])
# How long after a step starts to signal, so the signal lands inside it: most steps take a fraction
# of a second here (signalled at once), the guests take several seconds to boot and k3s a few to start.
INTO_STEP_S = {"vms.define": 0.3, "vms.start": 3.0, "k3s.server": 1.0, "k3s.agents": 1.0, "k3s.taints": 0.2}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, sshd_farm: SshdFarm) -> Iterator[Lab]:
    guest = build_guest()
    remove_crashed_labs()
    tmp = tmp_path_factory.mktemp("rlab")
    hv = sshd_farm.start(f"rlab-{tmp.name[-6:]}")
    token = f"K10reliability{secrets.token_hex(12)}"
    lab = Lab(tmp, hv, guest, token)
    yield lab
    for name in lab.domains():
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
    sshd_farm.stop(hv.name)


@pytest.fixture(scope="module")
def baseline(lab: Lab) -> dict[str, Any]:
    """A clean provision, with the process lists of this machine and of the guests sampled throughout."""
    watch = TokenWatch(lab)
    watch.start()
    try:
        done = lab("provision", f"--host={HOST}")
    finally:
        watch.stop()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"done": done, "watch": watch, "state": lab.end_state()}


class TokenWatch:
    """Samples every process's argv and environment, here and inside each guest once it answers SSH."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.token = lab, lab.token.encode()
        self.hits: list[str] = []
        self.samples = 0
        self.guest_samples: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._local, daemon=True)] + [
            threading.Thread(target=self._guest, args=(vm,), daemon=True) for vm in lab.vms]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _local(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        data = (proc / part).read_bytes()
                    except OSError:
                        continue
                    if self.token in data:
                        self.hits.append(f"local pid {proc.name} {part}")
            self.samples += 1
            self._stop.wait(0.05)

    def _guest(self, vm: str) -> None:
        # Inside the guest: one shell loop dumping every process's argv and environment (one cat per
        # round: a fork per process would be too slow under TCG to catch a short-lived installer).
        loop = ("while :; do cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null; echo; echo SAMPLE; "
                "sleep 0.05; done")
        while not self._stop.is_set():
            client = paramiko.SSHClient()
            # A test-side observer that only reads: it must not wait for provision to record the keys.
            client.set_missing_host_key_policy(paramiko.WarningPolicy())  # noqa: S507
            try:
                client.connect("127.0.0.1", port=self.lab.ssh_ports[vm], username="root",
                               key_filename=str(self.lab.hv.key_file), look_for_keys=False, allow_agent=False,
                               timeout=2, banner_timeout=2, auth_timeout=2)
                channel = client.get_transport().open_session()  # type: ignore[union-attr]
                channel.exec_command(loop)
                buffer = b""
                while not self._stop.is_set() and not channel.exit_status_ready():
                    if channel.recv_ready():
                        buffer += channel.recv(1 << 20)
                        *rounds, buffer = buffer.split(b"\nSAMPLE\n")
                        for text in rounds:
                            self.guest_samples[vm] = self.guest_samples.get(vm, 0) + 1
                            if self.token in text:
                                self.hits.append(f"{vm}: a process's argv or environment")
                    else:
                        self._stop.wait(0.02)
            except (OSError, EOFError, paramiko.SSHException):
                self._stop.wait(0.5)  # not booted yet, or rebooting
            finally:
                client.close()


def test_clean_provision_leaks_the_token_nowhere(lab: Lab, baseline: dict[str, Any]) -> None:
    done, watch = baseline["done"], baseline["watch"]
    token = lab.token
    assert watch.samples > 20 and all(watch.guest_samples.get(vm, 0) > 5 for vm in lab.vms), (
        watch.samples, watch.guest_samples)  # the watch really watched, here and in both guests
    assert watch.hits == []
    assert token not in done.stdout + done.stderr
    # Every file this lab wrote here: run records, hosts, sysroot, seeds, disk images, libvirt's logs.
    leaked = [str(p) for p in lab.files() if p != lab.token_file and token.encode() in p.read_bytes()]
    assert leaked == []
    assert oct(lab.token_file.stat().st_mode & 0o777) == "0o600"
    # Inside the guests: only 0600 files hold it (our config.yaml and k3s's own token state).
    for vm in lab.vms:
        # Every writable tree of the guest (busybox grep has no --exclude-dir for /proc and /sys).
        holders = lab.vm_shell(vm, f"grep -rlsF {token} /etc /root /tmp /run /var /usr/local /home | "
                                   "while read f; do stat -L -c '%a %n' \"$f\"; done").splitlines()
        assert "600 /etc/rancher/k3s/config.yaml" in holders, holders
        assert all(line.startswith("600 ") for line in holders), holders


def test_second_provision_changes_nothing_and_runs_no_mutating_command(lab: Lab, baseline: dict[str, Any]) -> None:
    again = lab("provision", f"--host={HOST}")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    run = lab.newest_run()
    assert run is not None
    results = read_journal(run)
    assert {r.step for r in results} == set(STEPS)
    assert [(r.step, r.target) for r in results if r.status != "ok"] == []
    assert [(r.step, r.commands) for r in results if r.commands] == []  # nothing applied, nowhere
    assert lab.end_state() == baseline["state"]


def test_drift_and_refused_teardown_touch_no_image(lab: Lab, baseline: dict[str, Any]) -> None:
    disks = sorted(p for p in lab.images.rglob("*.qcow2"))
    assert len(disks) == 5  # base, two OS overlays, the data VM's hot disk and its lake
    before = {p: sha(p) for p in disks}
    assert before[lab.base] == lab.base_sha  # the full provision left the base image as it was

    # Drift an operator could cause: a VM's vCPU moved by hand, the lake given another size in the
    # inventory. Provision reports it and changes no image.
    server = lab.server_vm
    virsh("vcpupin", server, "0", "0", "--live")
    host_file = lab.hosts / f"{HOST}.yaml"
    original = host_file.read_text()
    host_file.write_text(original.replace("size_gb: 8", "size_gb: 16"))
    drifted = lab("provision", f"--host={HOST}")
    host_file.write_text(original)
    assert drifted.returncode == 5, drifted.stdout[-3000:] + drifted.stderr[-3000:]
    assert "never overwritten or resized" in drifted.stderr
    assert {p: sha(p) for p in disks} == before

    redo = lab("provision", f"--host={HOST}")  # the lake back in the inventory: the live pin is put back
    assert redo.returncode == 0, redo.stdout[-3000:] + redo.stderr[-3000:]

    # Teardown without --yes: the plan only. Its steps run alone without --yes: refused; and the
    # disks never go while a domain still uses them, --yes or not.
    plan = lab("teardown", f"--host={HOST}", "--include-data")
    assert plan.returncode == 0 and "Nothing was deleted" in plan.stdout, plan.stdout + plan.stderr
    refused = lab("step", "vms.remove", f"--host={HOST}")
    assert refused.returncode == 2 and "nothing was deleted: rerun with --yes" in refused.stderr, refused.stderr
    in_use = lab("step", "disks.remove", f"--host={HOST}", "--include-data", "--yes")
    assert in_use.returncode == 4 and "still uses its disks" in in_use.stderr, in_use.stderr
    assert {p: sha(p) for p in disks} == before
    assert lab.end_state() == baseline["state"]


def interrupted_chain(lab: Lab, signum: int) -> list[str]:
    """Provision, signalled inside each step in turn, resuming each time; then resume to the end.

    Each run is signalled in the first step it starts at or after the next one not yet hit (a step
    the signal missed is verified by then, and resume goes past it).
    """
    outcomes: list[str] = []
    todo = 0
    while todo < len(STEPS):
        previous = lab.newest_run()
        log = lab.tmp / f"chain-{signal.Signals(signum).name}-{len(outcomes)}.out"
        proc = lab.popen("provision", f"--host={HOST}", *(["--resume"] if outcomes else []), log=log)
        hit = wait_for_line(lab, proc, previous.name if previous else None,
                            tuple(f"step {step} started" for step in STEPS[todo:]))
        if hit is None:
            raise AssertionError(f"run ended before any of {STEPS[todo:]} started: {log.read_text()[-3000:]}")
        step = STEPS[todo:][hit]
        threading.Event().wait(INTO_STEP_S.get(step, 0.0))
        proc.send_signal(signum)
        code = proc.wait(timeout=600)
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        if signum == signal.SIGINT:
            assert code in (130, 0), text[-3000:]  # 0: the last step finished before the signal landed
            if code:
                assert "resume: invoke provision --host=rlab --resume" in text
        else:
            assert code == -signal.SIGKILL
        run = lab.newest_run()
        assert run is not None
        journal = {r.step: r.status for r in read_journal(run)}
        outcomes.append(f"{step}: exit {code}, journal {journal.get(step, 'not journalled')}")
        todo = STEPS.index(step) + 1
    final = lab("provision", f"--host={HOST}", "--resume")
    if final.returncode != 0 and "nothing to resume" not in final.stderr:
        raise AssertionError(final.stdout[-3000:] + final.stderr[-3000:])
    check = lab("provision", f"--host={HOST}")  # and a whole run finds nothing left to do
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    return outcomes


def teardown_keeping_data(lab: Lab) -> dict[Path, str]:
    lake = {p: sha(p) for p in (lab.images / "ssd").glob("*.qcow2")} | {
        p: sha(p) for p in (lab.images / "hdd").glob("*.qcow2")}
    gone = lab("teardown", f"--host={HOST}", "--yes")
    assert gone.returncode == 0, gone.stdout[-3000:] + gone.stderr[-3000:]
    assert lab.domains() == []
    lab.forget_vm_keys()
    return lake


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_in_every_step_then_resumed_ends_as_a_clean_run(lab: Lab, baseline: dict[str, Any],
                                                                    signum: int) -> None:
    data_disks = teardown_keeping_data(lab)
    outcomes = interrupted_chain(lab, signum)
    (lab.tmp / f"outcomes-{signal.Signals(signum).name}.txt").write_text("\n".join(outcomes) + "\n")
    assert lab.end_state() == baseline["state"], "\n".join(outcomes)
    assert {p: sha(p) for p in data_disks} == data_disks  # the data disks survived teardown and re-provision
    assert sha(lab.base) == lab.base_sha
    assert lab.leftovers() == []
    assert len(lab.domains()) == 2  # no duplicates
