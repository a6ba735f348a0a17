"""monitoring/alerts.yml against promtool, Prometheus's own checker and rule unit-tester.

- The shipped file is what lib/exporter/rules.py makes from lib/verdicts.py's table (so the
  thresholds cannot drift apart), and `promtool check rules` accepts it.
- One `promtool test rules` case per alert: a breach that lasts past `for:` fires, with the severity
  and the doctor command; one that is under the threshold, too short, or on a host whose inventory
  turned the fix off does not.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib import verdicts
from lib.exporter import rules
from tests.inventory_helpers import REPO

RULES = REPO / "monitoring" / "alerts.yml"
pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) missing")


def test_the_shipped_rules_are_the_tables_and_promtool_accepts_them() -> None:
    assert RULES.read_text() == rules.render(), ("monitoring/alerts.yml differs from lib/verdicts.py: run "
                                                 ".venv/bin/python -m lib.exporter.rules > monitoring/alerts.yml")
    shipped = {r["alert"]: r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    for v in verdicts.TABLE:
        if not v.alert:
            continue
        rule = shipped[v.alert]
        assert (rule["for"], rule["labels"]["severity"]) == (v.for_, v.severity)
        if v.threshold is not None:
            assert rule["expr"].endswith(f"> {v.threshold:g}")
        assert rule["annotations"]["doctor"] == "invoke doctor --host={{ $labels.instance }}"
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def S(name: str, values: str, instance: str = "hv1", **labels: str) -> dict[str, str]:
    """An input series with the labels the scrape config gives (instance, job) and the exporter's."""
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f'{name}{{instance="{instance}", job="numa_k3s"{extra}}}', "values": values}


def applies(key: str, value: int, instance: str) -> dict[str, str]:
    return S("numa_k3s_verdict_applies", f"{value}x40", instance, host=instance, verdict=key)


# alert -> (input series, minute it must be firing, labels of the ONE alert expected then). Every
# other series in the case is the not-firing side: under the threshold, or the fix turned off.
CASES: dict[str, tuple[list[dict[str, str]], int, dict[str, str]]] = {
    "NumaK3sRemoteMemory": ([S("numa_k3s_vm_remote_memory_ratio", "0.05x40", host="hv1", vm="a"),
                             S("numa_k3s_vm_remote_memory_ratio", "0.005x40", host="hv1", vm="b")],
                            30, {"host": "hv1", "vm": "a", "job": "numa_k3s"}),
    "NumaK3sNumaForeignHigh": ([S("numa_k3s_node_numa_foreign_pages_total", "0+2x40", host="hv1", node="0"),
                                S("numa_k3s_node_numa_hit_pages_total", "0+100x40", host="hv1", node="0"),
                                S("numa_k3s_node_numa_miss_pages_total", "0+0x40", host="hv1", node="1"),
                                S("numa_k3s_node_numa_foreign_pages_total", "0+1x40", "hv2", host="hv2", node="0"),
                                S("numa_k3s_node_numa_hit_pages_total", "0+200x40", "hv2", host="hv2", node="0"),
                                S("numa_k3s_node_numa_miss_pages_total", "0+0x40", "hv2", host="hv2", node="0")],
                               30, {"host": "hv1"}),
    "NumaK3sEmulatorOverloaded": ([S("numa_k3s_emulator_cpu_ratio", "0.6x40", host="hv1", vm="a"),
                                   S("numa_k3s_emulator_cpu_ratio", "0.4x40", host="hv1", vm="b")],
                                  30, {"host": "hv1", "vm": "a", "job": "numa_k3s"}),
    "NumaK3sVcpuRunQueueWait": ([S("numa_k3s_vcpu_run_delay_seconds_total", "0+6x40", host="hv1", vm="a", vcpu="0"),
                                 S("numa_k3s_vcpu_run_delay_seconds_total", "0+1x40", host="hv1", vm="a", vcpu="1")],
                                30, {"host": "hv1", "vm": "a", "vcpu": "0", "job": "numa_k3s"}),
    "NumaK3sHostTaskOnVcpuCpu": ([S("numa_k3s_vcpu_cpu_host_tasks", "2x40", host="hv1"),
                                  applies("host_tasks", 1, "hv1"),
                                  S("numa_k3s_vcpu_cpu_host_tasks", "2x40", "hv2", host="hv2"),
                                  applies("host_tasks", 0, "hv2"),  # confinement off there: accepted
                                  S("numa_k3s_vcpu_cpu_host_tasks", "0x40", "hv3", host="hv3"),
                                  applies("host_tasks", 1, "hv3")],
                                 30, {"host": "hv1", "job": "numa_k3s"}),
    "NumaK3sDeviceIrqOnVcpuCpu": ([S("numa_k3s_vcpu_cpu_device_irqs", "1x40", host="hv1"),
                                   applies("device_irqs", 1, "hv1"),
                                   S("numa_k3s_vcpu_cpu_device_irqs", "1x40", "hv2", host="hv2"),
                                   applies("device_irqs", 0, "hv2")],
                                  30, {"host": "hv1", "job": "numa_k3s"}),
    "NumaK3sPinDrift": ([S("numa_k3s_vcpu_pin_drift", "1x40", host="hv1", vm="a", vcpu="3"),
                         S("numa_k3s_vcpu_pin_drift", "0x40", host="hv1", vm="a", vcpu="2")],
                        30, {"host": "hv1", "vm": "a", "vcpu": "3", "job": "numa_k3s"}),
    "NumaK3sGovernorNotPerformance": ([S("numa_k3s_cpu_governor_info", "1x40", host="hv1", cpu="2",
                                         governor="powersave"),
                                       applies("governor", 1, "hv1"),
                                       S("numa_k3s_cpu_governor_info", "1x40", "hv2", host="hv2", cpu="2",
                                         governor="performance"), applies("governor", 1, "hv2"),
                                       S("numa_k3s_cpu_governor_info", "1x40", "hv3", host="hv3", cpu="2",
                                         governor="powersave"), applies("governor", 0, "hv3")],
                                      30, {"host": "hv1"}),
    "NumaK3sTargetDown": ([S("numa_k3s_probe_success", "0x40"), S("numa_k3s_probe_success", "1x40", "hv2"),
                           {"series": 'up{instance="hv2", job="numa_k3s"}', "values": "1x40"}],
                          30, {"job": "numa_k3s"}),
}


def _annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, template in rule["annotations"].items():
        text = template
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        out[key] = text
    return out


@pytest.mark.parametrize("alert", sorted(CASES))
def test_each_alert_fires_past_its_for_and_not_before_nor_under_its_threshold(alert: str, tmp_path: Path) -> None:
    shipped = {r["alert"]: r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    assert set(CASES) == set(shipped)  # a case for every alert the file ships
    rule = shipped[alert]
    series, minute, labels = CASES[alert]
    labels = {"instance": "hv1", **labels}
    for_minutes = int(rule["for"].rstrip("m"))
    assert minute > for_minutes + 5  # the breach has lasted past for: (and a 5m rate window) by then
    firing = {"exp_labels": {**labels, "severity": rule["labels"]["severity"], "verdict": rule["labels"]["verdict"]},
              "exp_annotations": _annotations(rule, labels)}
    test = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            # The breach is there, but not for `for:` yet: pending at most, never firing.
            {"eval_time": f"{for_minutes - 1}m", "alertname": alert, "exp_alerts": []},
            {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": [firing]},
        ]}]}
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run(["promtool", "test", "rules", str(path)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_docs_show_the_shipped_scrape_config() -> None:
    """docs/metrics.md's scrape config is monitoring/prometheus.yml's (the one the slow test runs), and promtool
    accepts that file."""
    docs = (REPO / "docs" / "metrics.md").read_text()
    block = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    shipped = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    assert shown["scrape_configs"] == shipped["scrape_configs"] and shown["rule_files"] == shipped["rule_files"]
    done = subprocess.run(["promtool", "check", "config", str(REPO / "monitoring" / "prometheus.yml")], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
