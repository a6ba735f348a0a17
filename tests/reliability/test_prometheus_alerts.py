"""A real Prometheus scraping the real exporter (`invoke exporter`, a process) over a pinned QEMU domain,
with monitoring/prometheus.yml's multi-target relabeling and monitoring/alerts.yml (its `for:` cut to
10 s in the test's copy). Two breaches are provoked, as an operator would meet them:

- an intruder: a process named numak3s-spin spinning on the vCPU's CPU (taskset);
- pin drift: the vCPU re-pinned by hand (`virsh vcpupin --live`) to the emulator's CPU.

Through Prometheus's HTTP API: the series exist with the documented labels, and each alert was
pending before it fired (the ALERTS series Prometheus itself records, so no poll can miss a state).

Cost: the domain never boots an OS (SeaBIOS finds no disk and halts), so nothing is booted or built;
Prometheus starts in about a second. Measured ~40-60 s on the 2-core CI machine.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.guest import free_port
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm
from tests.harness.sysfs import HostShape, inventory_topology
from tests.inventory_helpers import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package missing")]
URI = "qemu:///system"
HOST = "pmlab"
VCPU_CPU, EMULATOR_CPU = 1, 0
WAIT_S = 300.0  # a safety net for a hung part, not a timing assertion
ALERTS = ("NumaK3sHostTaskOnVcpuCpu", "NumaK3sPinDrift")


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=True, timeout=120).stdout


def domain_xml(name: str) -> str:
    """One vCPU pinned to CPU 1, the emulator to CPU 0, memory strict on node 0; no disk, no OS."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu placement='static'>1</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='{VCPU_CPU}'/><emulatorpin cpuset='{EMULATOR_CPU}'/></cputune>
  <numatune><memory mode='strict' nodeset='0'/></numatune>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""


@dataclass
class Stack:
    tmp: Path
    vm: str
    prometheus: str  # base URL of Prometheus's API
    exporter: subprocess.Popen[str]
    server: subprocess.Popen[str]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        conn = http.client.HTTPConnection(self.prometheus, timeout=60)
        try:
            conn.request("GET", f"/api/v1/{path}?{query}")
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, what: str, found: Any) -> Any:
        """Poll until found() gives something; fails with the logs if the safety net runs out."""
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            for proc in (self.exporter, self.server):
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args!r} exited ({proc.returncode}) while waiting for {what}: {self._logs()}")
            try:
                value = found()
            except OSError:  # Prometheus still starting: not listening yet
                value = None
            if value:
                return value
            time.sleep(1)
        pytest.fail(f"never saw {what} within {WAIT_S:g} s; logs: {self._logs()}")

    def _logs(self) -> dict[str, str]:
        return {p.name: p.read_text()[-3000:] for p in self.tmp.glob("*.log")}


def _start(argv: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:  # setpriv: a SIGKILLed pytest does not leak a listener
        return subprocess.Popen(["setpriv", "--pdeathsig", "TERM", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)


def _config(tmp: Path, exporter_port: int) -> Path:
    """The shipped config with the test's ports, target, and rules whose for: is 10 s."""
    rules = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "10s"
    (tmp / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "2s"}
    config["rule_files"] = [str(tmp / "alerts.yml")]
    probe, health = config["scrape_configs"]
    probe["static_configs"] = [{"targets": [HOST]}]
    probe["relabel_configs"][-1]["replacement"] = f"127.0.0.1:{exporter_port}"
    health["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(sshd_farm: SshdFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prom")
    hv = sshd_farm.start(f"prom-{secrets.token_hex(2)}")  # sysroot "/": this machine's own /proc and /sys
    vm = f"pm{secrets.token_hex(3)}"
    spec = {"name": vm, "vcpu_count": 1, "memory_mb": 64, "disk_path": f"/var/lib/libvirt/images/{vm}.qcow2",
            "disk_size_gb": 1, "base_image_path": "/var/lib/libvirt/images/base.qcow2",
            "bridge_network_interface": "br0", "cloud_init_iso_path": f"/var/lib/libvirt/images/{vm}-seed.iso",
            "tuning": {"vcpu_pins": [str(VCPU_CPU)], "emulator_cpuset": str(EMULATOR_CPU),
                       "numa_memory": {"nodeset": "0", "mode": "strict"}},
            "k8s": {"role": "server", "taints": []}}
    topology = inventory_topology(HostShape(sockets=1, cores_per_socket=2, threads_per_core=1,
                                            memory_mb_per_node=16384, l3_kb=0))
    hosts = tmp / "hosts"
    write_host(hosts, HOST, hv, vms=[spec], topology=topology)
    (hosts / "defaults.yaml").write_text((REPO / "hosts" / "defaults.yaml").read_text())
    (tmp / "invoke.yaml").write_text(yaml.safe_dump({"hosts_dir": str(hosts), "runs_dir": str(tmp / "runs")}))
    (tmp / "domain.xml").write_text(domain_xml(vm))
    virsh("define", str(tmp / "domain.xml"))
    procs: list[subprocess.Popen[str]] = []
    try:
        virsh("start", vm)
        exporter_port, prom_port = free_port(), free_port()
        exporter = _start([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(tmp / "invoke.yaml"),
                           "exporter", f"--listen=127.0.0.1:{exporter_port}", "--interval=0.5"], tmp / "exporter.log")
        procs.append(exporter)
        server = _start(["prometheus", f"--config.file={_config(tmp, exporter_port)}",
                         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                         "--log.level=warn"], tmp / "prometheus.log")
        procs.append(server)
        yield Stack(tmp, vm, f"127.0.0.1:{prom_port}", exporter, server)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["virsh", "-c", URI, "destroy", vm], capture_output=True, check=False, timeout=120)
        subprocess.run(["virsh", "-c", URI, "undefine", vm], capture_output=True, check=False, timeout=120)
        sshd_farm.stop(hv.name)


def _series(stack: Stack, metric: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = stack.api("series", **{"match[]": f'{metric}{{instance="{HOST}"}}'})
    return found


def _value(stack: Stack, query: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = stack.api("query", query=query)["result"]
    return result


def test_an_intruder_and_a_hand_pin_fire_their_alerts_through_a_real_prometheus(stack: Stack) -> None:
    # Before any breach: the target is up and the vCPU's pin agrees with the inventory.
    stack.wait("a successful probe", lambda: _value(stack, f'numa_k3s_probe_success{{instance="{HOST}"}} == 1'))
    drift = stack.wait("the pin drift series", lambda: _series(stack, "numa_k3s_vcpu_pin_drift"))
    assert drift == [{"__name__": "numa_k3s_vcpu_pin_drift", "instance": HOST, "job": "numa_k3s", "host": HOST,
                      "vm": stack.vm, "vcpu": "0"}]
    assert _value(stack, f'numa_k3s_vcpu_pin_drift{{instance="{HOST}"}}')[0]["value"][1] == "0"
    # The documented labels on the families the alerts and dashboards use.
    for metric, labels in (("numa_k3s_vcpu_run_delay_seconds_total", {"host", "vm", "vcpu"}),
                           ("numa_k3s_emulator_cpu_ratio", {"host", "vm"}),
                           ("numa_k3s_vm_memory_bytes", {"host", "vm", "node"}),
                           ("numa_k3s_node_numa_foreign_pages_total", {"host", "node"}),
                           ("numa_k3s_vcpu_cpu_host_tasks", {"host"}),
                           ("numa_k3s_verdict_applies", {"host", "verdict"})):
        found = stack.wait(metric, lambda m=metric: _series(stack, m))
        assert all(set(s) == {"__name__", "instance", "job", *labels} for s in found), (metric, found)

    spin = stack.tmp / "numak3s-spin"
    shutil.copy("/usr/bin/yes", spin)
    intruder = subprocess.Popen(["taskset", "-c", str(VCPU_CPU), str(spin)], stdout=subprocess.DEVNULL)
    try:
        virsh("vcpupin", stack.vm, "0", str(EMULATOR_CPU), "--live")
        seen = stack.wait("the intruder on the vCPU's CPU", lambda: _value(
            stack, f'numa_k3s_vcpu_cpu_task_info{{instance="{HOST}", comm="numak3s-spin", kind="process"}}'))
        assert seen[0]["metric"]["cpu"] == str(VCPU_CPU) and seen[0]["metric"]["pid"] == str(intruder.pid)
        live = stack.wait("the live pin", lambda: _value(
            stack, f'numa_k3s_vcpu_pin_info{{instance="{HOST}", live="{EMULATOR_CPU}"}}'))
        assert live[0]["metric"]["configured"] == str(VCPU_CPU)
        for alert in ALERTS:
            stack.wait(f"{alert} firing", lambda a=alert: _value(
                stack, f'ALERTS{{alertname="{a}", alertstate="firing", instance="{HOST}"}}'))
            # Prometheus records ALERTS for pending as well: the first pending sample came before firing.
            # The subquery's steps fall on whole seconds: a firing sample newer than the last whole second
            # is seen by the instant query above but not yet by the subquery, so it is waited for too.
            first = {state: stack.wait(f"{alert}'s first {state} sample", lambda a=alert, st=state: _value(
                stack, f'min_over_time(timestamp(ALERTS{{alertname="{a}", alertstate="{st}",'
                       f' instance="{HOST}"}})[10m:1s])')) for state in ("pending", "firing")}
            assert float(first["pending"][0]["value"][1]) < float(first["firing"][0]["value"][1])
        firing = {a["labels"]["alertname"]: a for a in stack.api("alerts")["alerts"] if a["state"] == "firing"}
        assert firing["NumaK3sPinDrift"]["labels"]["vm"] == stack.vm
        assert firing["NumaK3sPinDrift"]["labels"]["severity"] == "critical"
        assert firing["NumaK3sPinDrift"]["annotations"]["doctor"] == f"invoke doctor --host={HOST}"
    finally:
        intruder.kill()
        intruder.wait(timeout=30)
