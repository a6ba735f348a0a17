"""Run with the system's python3 (cloud-init's own package): the files cloud-init's own status_wrapper
writes at every point of a boot, each with what cloud-init's own `status` says about them.

Prints a JSON list of {"when", "status_json", "result_json", "says"}: cloud-init's four stages run in
turn through cloudinit.cmd.main.status_wrapper (the code that writes /run/cloud-init/status.json and
result.json in a real boot) with stand-in stage functions; each stage is seen while running and
after. `errors` makes the named stage report an error, as a failing module does. The verdict is
cloudinit.cmd.status.get_status_details on the same directory: the oracle lib/guest_state.py must
agree with. Nothing here touches this machine's /run or /var/lib/cloud.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from types import SimpleNamespace

from cloudinit.cmd import main, status
from cloudinit.helpers import Paths


def read(path: str) -> str:
    return open(path).read() if os.path.exists(path) else ""


def boot(errors: str) -> list[dict[str, str]]:
    tmp = tempfile.mkdtemp(prefix="numa-k3s-cloudinit-")
    data_d, link_d = os.path.join(tmp, "data"), os.path.join(tmp, "run")
    paths = Paths({"run_dir": link_d, "cloud_dir": os.path.join(tmp, "cloud")})
    seen: list[dict[str, str]] = []

    def snap(when: str) -> None:
        says = status.get_status_details(paths).status.value
        seen.append({"when": when, "status_json": read(os.path.join(link_d, "status.json")),
                     "result_json": read(os.path.join(link_d, "result.json")), "says": says})

    snap("before init-local")
    for name, mode, local in (("init", "init-local", True), ("init", "init", False),
                              ("modules", "config", None), ("modules", "final", None)):
        stage = mode if name == "init" else f"modules-{mode}"

        def functor(_name: str, _args: object, stage: str = stage) -> object:
            snap(f"{stage} running")
            failed = [f"{stage}: a module failed"] if stage == errors else []
            return ("DataSourceNoCloud [seed=/dev/vdz]", failed) if stage.startswith("init") else failed

        args = SimpleNamespace(action=(name, functor), local=local, mode=mode)
        main.status_wrapper(name, args, data_d=data_d, link_d=link_d)
        snap(f"{stage} finished")
    return seen


if __name__ == "__main__":
    print(json.dumps(boot(sys.argv[1] if len(sys.argv) > 1 else "")))
