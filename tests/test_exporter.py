"""The exporter against real parts: a farm sshd as the hypervisor (its sysroot the spec host, untuned),
the shared libvirtd for the live reads, prometheus_client's own parser and `promtool check metrics`
on what it serves. The one stand-in is a sampler that blocks on an Event, to hold a probe "slow"
without guessing at timing."""

from __future__ import annotations

import http.client
import io
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lib.exporter.sample import HostSample, sample_host
from lib.exporter.server import Prober, Settings, listen_address, server
from lib.flags import FlagError
from lib.inventory.load import LoadedHost, load_inventory
from lib.pool import HostShell
from lib.retry import Policies, Policy
from tests.harness.guest import free_port
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost, count_auths
from tests.harness.sysfs import HostShape

FAST = Policies(ssh_connect=Policy("ssh_connect", attempts=1, wait_initial=0.1, wait_max=0.1),
                transient=replace(Policies().transient, attempts=1))


def samples(text: bytes) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text.decode()) for s in family.samples]


def named(text: bytes, name: str) -> list[Sample]:
    return [s for s in samples(text) if s.name == name]


@pytest.fixture
def hosts(ssh_host: SshHost, tmp_path: Path, make_sysroot: Callable[[HostShape], Path]) -> dict[str, LoadedHost]:
    """hv1 (the farm host, spec sysroot, one VM libvirt does not know), dead1 (nothing listens), and
    nofreq (the same sshd, a sysroot without cpufreq)."""
    hosts_dir = tmp_path / "hosts"
    write_host(hosts_dir, "nofreq", ssh_host, sysroot=make_sysroot(HostShape(cpufreq=False)),
               vms=[small_vm("exp-nofreq", 3, role="server")])
    vm = small_vm(f"exp-{secrets.token_hex(4)}", 1, role="server")  # a name libvirt never had
    write_host(hosts_dir, "hv1", ssh_host, sysroot=ssh_host.sysroot, vms=[vm])
    dead = replace(ssh_host, port=free_port())
    write_host(hosts_dir, "dead1", dead, sysroot=ssh_host.sysroot, vms=[small_vm("exp-dead", 2, role="server")])
    return load_inventory(hosts_dir, None).hosts


def probe_once(hosts: dict[str, LoadedHost], target: str, *, interval: float) -> bytes:
    """One probe of target by a fresh prober, closed afterwards (its text as Prometheus reads it)."""
    prober = Prober(hosts, FAST, Settings(interval=interval))
    try:
        return prober.probe(target, 60.0)
    finally:
        prober.close()


def test_a_probe_reads_the_host_and_absent_metrics_come_with_a_reason(hosts: dict[str, LoadedHost]) -> None:
    text = probe_once(hosts, "hv1", interval=0.2)
    assert named(text, "numa_k3s_probe_success")[0].value == 1
    assert not Path(hosts["hv1"].host.lock_path).exists()  # never took (so never made) the host lock
    vm = hosts["hv1"].host.vms[0].name
    assert [(s.labels, s.value) for s in named(text, "numa_k3s_vm_running")] == [({"host": "hv1", "vm": vm}, 0)]
    # The spec sysroot is untuned: powersave on every CPU, numa_balancing 1, THP madvise.
    governors = {s.labels["cpu"]: s.labels["governor"] for s in named(text, "numa_k3s_cpu_governor_info")}
    assert governors == {"2": "powersave", "38": "powersave"}  # the VM's vCPU CPUs only
    assert named(text, "numa_k3s_numa_balancing")[0].value == 1
    thp = named(text, "numa_k3s_transparent_hugepage_info")[0].labels
    assert (thp["enabled"], thp["defrag"]) == ("madvise", "madvise")
    # The sysroot's only task (PID 1) sleeps: a measured zero, reported as 0.
    assert [s.value for s in named(text, "numa_k3s_vcpu_cpu_host_tasks")] == [0]
    assert named(text, "numa_k3s_metric_unavailable") == []
    applies = {s.labels["verdict"]: s.value for s in named(text, "numa_k3s_verdict_applies")}
    assert applies == {"host_tasks": 1, "device_irqs": 1, "governor": 1}
    if shutil.which("promtool"):  # Prometheus's own linter for the exposition (names, units, help)
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, check=False, capture_output=True,
                              timeout=60)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


def test_a_metric_the_host_cannot_give_is_absent_with_its_reason(hosts: dict[str, LoadedHost]) -> None:
    text = probe_once(hosts, "nofreq", interval=0.1)
    assert named(text, "numa_k3s_probe_success")[0].value == 1
    assert named(text, "numa_k3s_cpu_governor_info") == []  # absent, never a 0 or an empty governor
    reasons = {s.labels["metric"]: s.labels["reason"] for s in named(text, "numa_k3s_metric_unavailable")}
    assert reasons == {"numa_k3s_cpu_governor_info": "no cpufreq on this host (no scaling_governor files)"}


def test_a_dead_target_answers_down_and_a_slow_one_never_blocks_the_others(hosts: dict[str, LoadedHost]) -> None:
    release = threading.Event()

    def sampler(session: HostShell, loaded: LoadedHost, interval: float) -> HostSample:
        if loaded.name == "hv1" and not release.is_set():
            release.wait(120)  # held until the test lets go: "slow", with no timing guess
        return sample_host(session, loaded.host, interval)

    log = io.StringIO()
    prober = Prober(hosts, FAST, Settings(interval=0.2, max_probes=4), sampler=sampler, log=log)
    try:
        slow = prober.probe("hv1", 0.2)
        assert named(slow, "numa_k3s_probe_success")[0].value == 0
        assert named(slow, "numa_k3s_vm_running") == []  # a failed probe reports no stale or zero figures
        down = prober.probe("dead1", 60.0)  # answered while hv1's read still hangs
        assert named(down, "numa_k3s_probe_success")[0].value == 0
        release.set()
        healthy = prober.probe("hv1", 60.0)
        assert named(healthy, "numa_k3s_probe_success")[0].value == 1
        health = generate(prober)
        errors = {(s.labels["target"], s.labels["reason"]): s.value
                  for s in named(health, "numa_k3s_exporter_probe_errors_total")}
        assert errors == {("hv1", "timeout"): 1, ("dead1", "connect"): 1}
        connected = {s.labels["target"]: s.value for s in named(health, "numa_k3s_exporter_connected")}
        assert connected == {"hv1": 1, "dead1": 0, "nofreq": 0}  # nofreq was never probed
        assert "probe dead1 failed: " in log.getvalue()
    finally:
        release.set()
        prober.close()


def generate(prober: Prober) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(prober.health)


def test_one_connection_per_target_kept_and_reopened_after_the_host_restarts(
        hosts: dict[str, LoadedHost], sshd_farm: SshdFarm, ssh_host: SshHost) -> None:
    prober = Prober(hosts, Policies(ssh_connect=Policy("ssh_connect", attempts=5, wait_initial=0.2, wait_max=1)),
                    Settings(interval=0.1))
    try:
        assert named(prober.probe("hv1", 60.0), "numa_k3s_probe_success")[0].value == 1
        logins = count_auths(ssh_host)  # the SSH session's, and libvirt's own qemu+ssh connection
        for _ in range(2):
            assert named(prober.probe("hv1", 60.0), "numa_k3s_probe_success")[0].value == 1
        assert count_auths(ssh_host) == logins  # kept: no login per probe
        sshd_farm.kill(ssh_host.name)  # every connection to it is cut
        assert named(prober.probe("hv1", 60.0), "numa_k3s_probe_success")[0].value == 0  # down while it is
        sshd_farm.restart(ssh_host.name)  # same port and key
        assert named(prober.probe("hv1", 60.0), "numa_k3s_probe_success")[0].value == 1
        opened = {s.labels["target"]: s.value for s in named(generate(prober), "numa_k3s_exporter_connects_total")}
        assert opened["hv1"] >= 2  # reopened by the ssh_connect policy, no restart of the exporter
    finally:
        prober.close()


@pytest.fixture
def exporter_url(hosts: dict[str, LoadedHost]) -> Iterator[str]:
    prober = Prober(hosts, FAST, Settings(interval=0.1))
    httpd = server(("127.0.0.1", 0), prober)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    prober.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=120)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_http_probe_metrics_and_bad_requests(exporter_url: str) -> None:
    status, body = get(f"{exporter_url}/probe?target=hv1", {"X-Prometheus-Scrape-Timeout-Seconds": "60"})
    assert status == 200 and "numa_k3s_probe_success 1.0" in body
    status, body = get(f"{exporter_url}/probe?target=nope")
    assert status == 400 and "unknown target 'nope'" in body
    assert get(f"{exporter_url}/probe")[0] == 400
    status, body = get(f"{exporter_url}/metrics")
    assert status == 200 and 'numa_k3s_exporter_probe_duration_seconds_count{target="hv1"} 1.0' in body


def test_the_budget_stays_under_prometheus_scrape_timeout(hosts: dict[str, LoadedHost]) -> None:
    prober = Prober(hosts, FAST, Settings(timeout=9.5))
    try:
        assert prober.budget("10") == 9.5 and prober.budget("4") == 3.5 and prober.budget(None) == 9.5
        assert prober.budget("soon") == 9.5  # a header that is not a number is ignored, not trusted
    finally:
        prober.close()
    assert listen_address("127.0.0.1:9464") == ("127.0.0.1", 9464) and listen_address("[::1]:1") == ("::1", 1)
    for bad in ("9464", "host:", ":80", "h:99999"):
        with pytest.raises(FlagError, match="--listen"):
            listen_address(bad)
