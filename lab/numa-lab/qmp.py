"""The NUMA lab's CPU hot-add over QMP, in the order that gives hv1's spread layout.

    python3 lab/numa-lab/qmp.py SOCKET SOCKETS CORES THREAD

QEMU boots the emulated host with one CPU (booting one CPU under TCG on a loaded machine is far
faster than booting 72: the others spin in stop_machine while their threads wait for a core). The
kernel numbers hot-added CPUs in the order it sees them; when several are pending it takes them in
QEMU's slot order (APIC id: s0c0t0, s0c0t1, s0c1t0, ...). So thread 0 of every core goes first
(THREAD=0, CPUs 1..S*C-1), the caller waits until the kernel has them all, then thread 1 (THREAD=1,
CPUs S*C..2*S*C-1): within one thread, slot order is core order, socket 0 first. Result: CPU N and
N+S*C are siblings, node 0 = 0-17,36-53 on hv1's shape. Present CPUs are skipped: rerunning adds
nothing. Lab tooling, not product code.
"""

from __future__ import annotations

import json
import socket
import sys


class Qmp:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw", encoding="utf-8")
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def call(self, command: str, **arguments: object) -> object:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise SystemExit(f"qmp {command} {arguments}: {reply['error'].get('desc')}")
        return reply.get("return")


def main(path: str, sockets: int, cores: int, thread: int) -> None:
    qmp = Qmp(path)
    hotpluggable = qmp.call("query-hotpluggable-cpus")
    assert isinstance(hotpluggable, list)
    present = {(c["props"]["socket-id"], c["props"]["core-id"], c["props"]["thread-id"])
               for c in hotpluggable if c.get("qom-path")}
    cpu_type = hotpluggable[0]["type"]
    added = 0
    for s in range(sockets):
        for c in range(cores):
            if (s, c, thread) in present:
                continue
            qmp.call("device_add", driver=cpu_type, id=f"cpu-s{s}-c{c}-t{thread}",
                     **{"socket-id": s, "core-id": c, "thread-id": thread})
            added += 1
    print(f"qmp: thread {thread}: {added} CPUs hot-added ({len(present)} were present)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
