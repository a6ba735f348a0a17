"""The no-op run on the converged lab (`make demo` first, nothing changed since), against its floor.

Three figures from the same run, each the median of 3 after a warm-up:
- provision: `invoke provision --host=lab`, which must change nothing and verify every step;
- verify.all: `invoke verify.all --host=lab`;
- floor: the same reads (every provision step's first round of reads, per target, with sudo where
  the engine uses it) read as ONE batched command per endpoint, all endpoints at once, over the
  same SSH paths (the VMs through the lab hypervisor as their jump host), with plain paramiko:
  nothing can read those facts for less. (Before 2026-12-06 evening the floor sent the guests'
  reads without sudo, so kubectl failed at once there: a floor lighter than the work.)

Prints one line: `noop: provision X.XX s, verify.all Y.YY s, floor Z.ZZ s, provision/floor R.RRx`.
The lab has fixed names and one port: run it as `flock /tmp/numa-k3s-demo.lock make bench-noop`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lib.gather import first_commands  # noqa: E402
from lib.inventory.load import LoadedHost, load_inventory  # noqa: E402
from lib.remote import Endpoint, nodelay_transport  # noqa: E402
from lib.runbook import load_runbook  # noqa: E402
from lib.shell import wired  # noqa: E402
from lib.steps.registry import REGISTRY  # noqa: E402
from lib.targets import targets_for  # noqa: E402


def batches(loaded: LoadedHost) -> dict[Endpoint, list[str]]:
    """Per SSH endpoint, what provision's steps read there first (each target's first round of
    declared reads: Run on the target, Ask on its peer), each in its own subshell and sent as the
    engine sends it (under `sudo -n` where it needs root and the user is not root)."""
    book = load_runbook(REPO / "runbooks" / "provision.yaml", REGISTRY)
    out: dict[Endpoint, list[str]] = {}
    for step in book.steps:
        for target in targets_for(step, loaded, mode="verify"):
            for where, command in first_commands(step, target):
                out.setdefault(where, []).append(f"( {wired(command, where.user, reveal=True)} )")
    return out


def _client(ep: Endpoint, sock: paramiko.Channel | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if ep.known_hosts:
        client.load_host_keys(str(Path(ep.known_hosts).expanduser()))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(ep.host, port=ep.port, username=ep.user, key_filename=ep.key_file, look_for_keys=False,
                   allow_agent=False, timeout=10, sock=sock, transport_factory=nodelay_transport)
    return client


def _exec(client: paramiko.SSHClient, script: str) -> None:
    _, out, err = client.exec_command(script)
    out.read()
    status = out.channel.recv_exit_status()
    if status != 0:
        raise RuntimeError(f"floor read failed ({status}): {err.read().decode()[-300:]}")


def floor(plan: dict[Endpoint, list[str]]) -> float:
    """One connection per endpoint (VMs through the hypervisor's), ONE exec each, all at once."""
    start = time.perf_counter()
    hv = next(ep for ep in plan if ep.via is None)
    hv_client = _client(hv)
    clients: list[paramiko.SSHClient] = [hv_client]

    def one(ep: Endpoint) -> None:
        client = hv_client
        if ep.via is not None:
            transport = hv_client.get_transport()
            assert transport is not None
            channel = transport.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0))
            client = _client(ep, channel)
            clients.append(client)
        _exec(client, "; ".join(plan[ep]) + "; true")

    try:
        with ThreadPoolExecutor(max_workers=len(plan)) as pool:
            list(pool.map(one, plan))
    finally:
        for client in reversed(clients):
            client.close()
    return time.perf_counter() - start


def timed(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=900)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"noop: `invoke {' '.join(args)}` failed (exit {done.returncode}); the lab is not "
                         f"converged (run `flock /tmp/numa-k3s-demo.lock make demo`):\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    if args[0] == "provision" and "changed=0" not in " ".join(done.stdout.split()):
        raise SystemExit(f"noop: provision changed something, so this was not a no-op:\n{done.stdout[-2000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="lab")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    loaded = load_inventory(REPO / "hosts", [args.host]).hosts[args.host]
    plan = batches(loaded)
    timed("provision", f"--host={args.host}")  # warm-up: caches, and the lab really converged
    floor(plan)
    rounds = [(timed("provision", f"--host={args.host}"), timed("verify.all", f"--host={args.host}"), floor(plan))
              for _ in range(args.runs)]
    provision, verify_all, bottom = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"noop: provision {provision:.2f} s, verify.all {verify_all:.2f} s, floor {bottom:.2f} s, "
          f"provision/floor {provision / bottom:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
