"""monitoring/alerts.yml, made from lib/verdicts.py's table: the one place the thresholds live.

The file is committed (operators point Prometheus at it), and tests/test_alert_rules.py fails when
it and this rendering differ, so a threshold changed in the table without regenerating the file
(`.venv/bin/python -m lib.exporter.rules > monitoring/alerts.yml`) cannot ship.

Every rule's labels carry `severity`; its annotations say what is wrong and the command that explains
it on that host. `instance` is the inventory's host name: the scrape config's relabeling puts the
probed target there (docs/metrics.md), as blackbox_exporter's does.
"""

from __future__ import annotations

from typing import Any

import yaml

from lib import verdicts
from lib.verdicts import Verdict

RATE_WINDOW = "5m"  # rates over five minutes: several scrapes at any usual interval


def _applies(key: str) -> str:
    # Only where the inventory leaves the fix on: with confinement off, host work on vCPU CPUs is accepted.
    return f'and on (instance, host) numa_k3s_verdict_applies{{verdict="{key}"}} == 1'


def expression(v: Verdict) -> str:
    t = f"{v.threshold:g}" if v.threshold is not None else ""
    w = RATE_WINDOW
    exprs = {
        "remote_memory": f"numa_k3s_vm_remote_memory_ratio > {t}",
        "numa_foreign": (f"sum by (instance, host) (rate(numa_k3s_node_numa_foreign_pages_total[{w}])) / "
                         f"(sum by (instance, host) (rate(numa_k3s_node_numa_hit_pages_total[{w}])) + "
                         f"sum by (instance, host) (rate(numa_k3s_node_numa_miss_pages_total[{w}]))) > {t}"),
        "emulator_load": f"numa_k3s_emulator_cpu_ratio > {t}",
        "vcpu_wait": f"rate(numa_k3s_vcpu_run_delay_seconds_total[{w}]) > {t}",
        "host_tasks": f"numa_k3s_vcpu_cpu_host_tasks > 0 {_applies('host_tasks')}",
        "device_irqs": f"numa_k3s_vcpu_cpu_device_irqs > 0 {_applies('device_irqs')}",
        "pin_drift": "numa_k3s_vcpu_pin_drift == 1",
        "governor": ('count by (instance, host) (numa_k3s_cpu_governor_info{governor!="performance"}) > 0 '
                     + _applies("governor")),
        "target_down": 'numa_k3s_probe_success == 0 or up{job="numa_k3s"} == 0',
    }
    return exprs[v.key]


def _rule(v: Verdict) -> dict[str, Any]:
    where = "{{ $labels.instance }}" + ("/{{ $labels.vm }}" if v.key in _PER_VM else "")
    return {
        "alert": v.alert,
        "expr": expression(v),
        "for": v.for_,
        "labels": {"severity": v.severity, "verdict": v.key},
        "annotations": {
            "summary": f"{where}: {v.summary}",
            "fix": v.fix,
            "doctor": "invoke doctor --host={{ $labels.instance }}",
        },
    }


_PER_VM = {"remote_memory", "emulator_load", "vcpu_wait", "pin_drift"}


def rules() -> dict[str, Any]:
    return {"groups": [{"name": "numa-k3s", "rules": [_rule(v) for v in verdicts.TABLE if v.alert]}]}


def render() -> str:
    head = ("# Made by `python -m lib.exporter.rules` from lib/verdicts.py (the thresholds' one table);\n"
            "# tests/test_alert_rules.py fails if this file and the table differ.\n"
            "# docs/metrics.md explains each alert.\n")
    return head + yaml.safe_dump(rules(), sort_keys=False, width=120)


if __name__ == "__main__":
    print(render(), end="")
