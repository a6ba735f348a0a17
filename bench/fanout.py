"""Scale: the fan-out run (inventory load, bios.check and host.tune verified) over 1, 5, 20 and 50 hosts.

Each host is a real OpenSSH daemon on 127.0.0.1 with its own generated sysroot (tests/harness/fanout.py,
the same fleet tests/reliability/test_scale.py runs). Wall time of each whole command, median of --runs
runs after a warm-up, engine and floor alternated every round:

- engine: bench/engine_fanout.py, one verify-mode Engine run over every host (as `invoke verify.bios`
  plus `invoke verify.tuning`): one SSH session per host, two batched facts commands, run records.
- floor: bench/floor.py, plain paramiko, one connection and ONE exec per host carrying the engine's
  same two facts commands, threads, TCP_NODELAY.

Target (issue #8, item 9): the engine over 50 hosts within 3x of its wall time over 1 host.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.fanout import first_hosts, write_fleet
from tests.harness.sshd import SshdFarm, start_hosts
from tests.harness.sysfs import fast_tmp_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
TARGET = 3.0


def machine_busy() -> float:
    """CPU seconds this whole machine has spent busy so far (every process: client, sshd, remote shells)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def busy_share(seconds: float = 1.0) -> float:
    """How busy the machine is with other work: share of all CPUs over `seconds` of our sleeping."""
    busy = machine_busy()
    time.sleep(seconds)
    return (machine_busy() - busy) / seconds / (os.cpu_count() or 1)


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[float, str, float, float]:
    """Wall seconds, stdout, the command's own CPU seconds, and the machine's busy CPU seconds meanwhile."""
    cpu, busy, start = client_cpu(), machine_busy(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return took, done.stdout, client_cpu() - cpu, machine_busy() - busy


def measure(counts: list[int], runs: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    top = max(counts)
    with tempfile.TemporaryDirectory(prefix="fanout-", dir=fast_tmp_dir()) as tmp_name, \
            SshdFarm(Path(tmp_name) / "farm") as farm:
        tmp = Path(tmp_name)
        names = [f"hv{i:02d}" for i in range(top)]
        started = time.perf_counter()
        fleet = start_hosts(farm, "f", top)
        write_fleet(fleet, tmp / "fleet", tmp / "sysroots", names)
        print(f"  {top} sshd hosts and sysroots ready in {time.perf_counter() - started:.1f}s", flush=True)
        for n in counts:
            work = first_hosts(tmp / "fleet", names, n, tmp / f"n{n}")

            def engine(work: Path = work) -> tuple[float, str, float, float]:
                runs_dir = work / "runs"
                try:
                    return timed([PY, str(HERE / "engine_fanout.py"), "--hosts-dir", str(work / "hosts"),
                                  "--runs-dir", str(runs_dir)])
                finally:
                    shutil.rmtree(runs_dir, ignore_errors=True)

            def floor(work: Path = work) -> tuple[float, str, float, float]:
                return timed([PY, str(HERE / "floor.py"), str(work / "floor.json")])

            tools = {"engine": engine, "floor": floor}
            for tool in tools.values():  # warm-up: page cache, first connections
                tool()
            samples: dict[str, list[float]] = {k: [] for k in (
                "engine", "floor", "imports", "run", "engine cpu", "floor cpu", "engine busy", "floor busy")}
            for r in range(runs):
                order = list(tools) if r % 2 == 0 else list(reversed(tools))
                for name in order:
                    took, out, cpu, busy = tools[name]()
                    samples[name].append(took)
                    samples[f"{name} cpu"].append(cpu)
                    samples[f"{name} busy"].append(busy)
                    if name == "engine":
                        phases = json.loads(out.splitlines()[-1])
                        samples["imports"].append(phases["imports"])
                        samples["run"].append(phases["run"])
            results[n] = {k: statistics.median(v) for k, v in samples.items()}
            row = results[n]
            print(f"  {n:>2} hosts: engine {row['engine']:.2f}s (run {row['run']:.2f}s)  floor {row['floor']:.2f}s",
                  flush=True)
    return results


def report(results: dict[int, dict[str, float]]) -> None:
    counts = sorted(results)
    print("\nmedian wall seconds (same run)")
    print(f"{'':<34}" + "".join(f"{f'{n} host' + ('s' if n > 1 else ''):>10}" for n in counts))
    rows = (("engine, whole command", "engine"), ("  of which imports", "imports"),
            ("  of which load + run + records", "run"), ("floor (paramiko, one exec/host)", "floor"))
    for label, key in rows:
        print(f"{label:<34}" + "".join(f"{results[n][key]:>10.2f}" for n in counts))
    print(f"{'engine / floor':<34}" + "".join(f"{results[n]['engine'] / results[n]['floor']:>9.2f}x" for n in counts))
    print("\nCPU seconds (median): the command's own, and the whole machine's busy time while it ran")
    print(f"(the machine has {os.cpu_count()} CPUs; the sshd hosts and their shells run on them too)")
    for label, key in (("engine, own CPU", "engine cpu"), ("engine, machine busy", "engine busy"),
                       ("floor, own CPU", "floor cpu"), ("floor, machine busy", "floor busy")):
        print(f"{label:<34}" + "".join(f"{results[n][key]:>10.2f}" for n in counts))
    first, last = counts[0], counts[-1]
    engine = results[last]["engine"] / results[first]["engine"]
    run = results[last]["run"] / results[first]["run"]
    floor = results[last]["floor"] / results[first]["floor"]
    print(f"\n{last} hosts / {first} host: engine {engine:.2f}x (in-process run {run:.2f}x), floor {floor:.2f}x")
    print(f"target: {last} hosts within {TARGET:g}x of {first} host: {'met' if engine <= TARGET else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="1,5,20,50")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 and 5 hosts, 1 run: a smoke test")
    args = parser.parse_args()
    counts = [1, 5] if args.quick else sorted(int(n) for n in args.hosts.split(","))
    runs = 1 if args.quick else args.runs
    print(f"fan-out benchmark: bios.check + host.tune verified, hosts {counts}, {runs} run(s) after a warm-up")
    before = busy_share()
    results = measure(counts, runs)
    report(results)
    after = busy_share()
    if max(before, after) > 0.25:  # other work on this box inflates the 1-host time most, flattering the ratio
        print(f"WARNING: the machine was {before:.0%} busy before and {after:.0%} after this benchmark with other "
              "work: the ratios are not reliable, run it again on a quiet machine")


if __name__ == "__main__":
    main()
