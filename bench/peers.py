"""Side by side: the same 20 reads per host over 1, 5 and 20 real sshd hosts, by every tool, one run.

Tools (../shared/bench/PEERS.md): this engine (bench/engine_reads.py), the floor (bench/floor.py:
paramiko, one batched exec per host), ansible-playbook (command module, and raw) and pyinfra 3.
Wall time of each whole command, median of --runs runs after a warm-up, tools alternated inside
every round so machine drift hits all alike. Peers live in bench/.peers (their own venv), never in
requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm, SshHost, start_hosts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PY = sys.executable
PEERS = HERE / ".peers"
READS = (HERE / "reads.txt").read_text().splitlines()
Tool = Callable[[Path], list[str]]


def ensure_peers() -> bool:
    if not (PEERS / "bin" / "ansible-playbook").exists() or not (PEERS / "bin" / "pyinfra").exists():
        print("installing peers into bench/.peers (ansible-core, pyinfra) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        done = subprocess.run([str(PEERS / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                               "ansible-core", "pyinfra"], check=False)
        if done.returncode != 0:
            print("could not install the peers; measuring this engine and the floor only")
            return False
    return True


def write_world(work: Path, hosts: list[SshHost]) -> None:
    """Inventories for every tool, all pointing at the same sshd hosts with host keys checked."""
    known = hosts[0].known_hosts
    for i, h in enumerate(hosts):
        write_host(work / "hosts", f"hv{i}", h)
    (work / "floor.json").write_text(json.dumps([
        {"host": h.host, "port": h.port, "user": h.user, "key": str(h.key_file), "known_hosts": str(known)}
        for h in hosts]))
    (work / "inventory.ini").write_text("[hv]\n" + "".join(
        f"hv{i} ansible_host={h.host} ansible_port={h.port} ansible_user={h.user} "
        f"ansible_ssh_private_key_file={h.key_file} ansible_python_interpreter=/usr/bin/python3\n"
        for i, h in enumerate(hosts)))
    control = Path(tempfile.mkdtemp(prefix="cp", dir="/tmp"))
    (work / "ansible.cfg").write_text(
        "[defaults]\nforks = 20\ngathering = explicit\nhost_key_checking = True\nstdout_callback = default\n"
        f"inventory = {work / 'inventory.ini'}\n\n[ssh_connection]\npipelining = True\n"
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={known}\n"
        f"control_path_dir = {control}\n")
    for variant, module in (("command", "command"), ("raw", "raw")):
        tasks = "".join(f"    - {module}: {read!r}\n      changed_when: false\n      failed_when: false\n"
                        for read in READS)
        (work / f"play-{variant}.yml").write_text(f"- hosts: hv\n  gather_facts: false\n  tasks:\n{tasks}")
    (work / "pyinfra_inventory.py").write_text("hv = [\n" + "".join(
        f"    ('hv{i}', {{'ssh_hostname': {h.host!r}, 'ssh_port': {h.port}, 'ssh_user': {h.user!r}, "
        f"'ssh_key': {str(h.key_file)!r}, 'ssh_known_hosts_file': {str(known)!r}, "
        f"'ssh_strict_host_key_checking': 'yes'}}),\n" for i, h in enumerate(hosts)) + "]\n")
    (work / "pyinfra_deploy.py").write_text("from pyinfra.operations import server\n" + "".join(
        f"server.shell(name={read!r}, commands=[{read + ' || true'!r}])\n" for read in READS))


TOOLS: dict[str, Tool] = {
    "engine": lambda w: [PY, str(HERE / "engine_reads.py"), "--hosts-dir", str(w / "hosts"),
                         "--runs-dir", str(w / "runs")],
    "floor": lambda w: [PY, str(HERE / "floor.py"), str(w / "floor.json")],
    "ansible": lambda w: [str(PEERS / "bin" / "ansible-playbook"), str(w / "play-command.yml")],
    "ansible-raw": lambda w: [str(PEERS / "bin" / "ansible-playbook"), str(w / "play-raw.yml")],
    "pyinfra": lambda w: [str(PEERS / "bin" / "pyinfra"), "-y", "--parallel", "20",
                          str(w / "pyinfra_inventory.py"), str(w / "pyinfra_deploy.py")],
}


def timed(cmd: list[str], work: Path) -> float:
    env = dict(os.environ, ANSIBLE_CONFIG=str(work / "ansible.cfg"), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False, timeout=900)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return took


def measure(counts: list[int], tools: list[str], runs: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp, SshdFarm(Path(tmp) / "farm") as farm:
        for n in counts:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            hosts = start_hosts(farm, f"b{n}-", n)
            write_world(work, hosts)
            samples: dict[str, list[float]] = {t: [] for t in tools}
            for t in tools:  # warm-up: first connections, ControlPersist masters, imports in page cache
                timed(TOOLS[t](work), work)
            for r in range(runs):
                order = tools[r % len(tools):] + tools[:r % len(tools)]  # alternate who goes first
                for t in order:
                    if t == "ansible" and n >= 20 and r >= 1:
                        continue  # ~50 s a run at 20 hosts: one measured run is what the budget allows
                    samples[t].append(timed(TOOLS[t](work), work))
            results[n] = {t: statistics.median(v) for t, v in samples.items() if v}
            print(f"  {n:>2} hosts: " + "  ".join(f"{t} {results[n][t]:.2f}s" for t in tools if t in results[n]),
                  flush=True)
            for h in hosts:
                farm.stop(h.name)
            shutil.rmtree(work / "runs", ignore_errors=True)
    return results


def report(results: dict[int, dict[str, float]], tools: list[str]) -> None:
    counts = sorted(results)
    print("\nmedian wall seconds (same run)")
    print(f"{'tool':<14}" + "".join(f"{n:>9} host{'s' if n > 1 else ''}" for n in counts))
    for t in tools:
        print(f"{t:<14}" + "".join(f"{results[n].get(t, float('nan')):>14.2f}" for n in counts))
    print("\nratios (peer time / engine time; engine time / floor time)")
    for n in counts:
        row = results[n]
        engine = row["engine"]
        parts = [f"{t} {row[t] / engine:.1f}x slower than the engine" for t in ("ansible", "ansible-raw", "pyinfra")
                 if t in row]
        if "floor" in row:
            parts.append(f"engine within {engine / row['floor']:.2f}x of the floor")
        print(f"  {n:>2} hosts: " + "; ".join(parts))
    top = max(counts)
    row = results[top]
    engine = row["engine"]
    print(f"\ntargets at {top} hosts:")
    for label, ok in (
        ("at least 5x faster than ansible-playbook (command)", "ansible" in row and row["ansible"] / engine >= 5),
        ("at least 2x faster than pyinfra", "pyinfra" in row and row["pyinfra"] / engine >= 2),
        ("within 2x of the floor", "floor" in row and engine / row["floor"] <= 2),
    ):
        print(f"  {'met ' if ok else 'MISSED'}  {label}")


def startup() -> None:
    print("\nCLI start-up (median of 3)")
    for label, cmd in (("inv --list", [str(REPO / ".venv" / "bin" / "invoke"), "--search-root", str(REPO), "--list"]),
                       ("ansible-playbook --version", [str(PEERS / "bin" / "ansible-playbook"), "--version"]),
                       ("pyinfra --version", [str(PEERS / "bin" / "pyinfra"), "--version"])):
        if not Path(cmd[0]).exists():
            continue
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        print(f"  {label:<28}{statistics.median(times):.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="1,5,20")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default="engine,floor,ansible,ansible-raw,pyinfra")
    parser.add_argument("--quick", action="store_true", help="1 and 5 hosts, 1 run: a smoke test")
    args = parser.parse_args()
    counts = [1, 5] if args.quick else [int(n) for n in args.hosts.split(",")]
    runs = 1 if args.quick else args.runs
    tools = args.tools.split(",")
    if not ensure_peers():
        tools = [t for t in tools if t in ("engine", "floor")]
    print(f"peer benchmark: 20 reads per host, hosts {counts}, {runs} run(s) after a warm-up, tools {tools}")
    report(measure(counts, tools, runs), tools)
    startup()


if __name__ == "__main__":
    main()
