"""The k3s cluster token on the operator's machine: given, or generated once and kept 0600.

Order: the NUMA_K3S_TOKEN environment variable; else the inventory's token_file (must be private
and outside this repository); else, when a run will change hosts, a new random token written there.
Plan and verify runs never create one. The value only ever leaves here as a Secret.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from lib.errors import ToolError
from lib.shell import Secret

ENV = "NUMA_K3S_TOKEN"
REPO = Path(__file__).resolve().parents[1]


class TokenError(ToolError):
    exit_code = 2


def token_path(token_file: str, host: str) -> Path:
    return Path(token_file.replace("{host}", host)).expanduser().absolute()


def cluster_token(token_file: str, host: str, *, create: bool,
                  environ: Mapping[str, str] = os.environ) -> Secret | None:
    if environ.get(ENV):
        return Secret(environ[ENV].strip())
    path = token_path(token_file, host)
    if path.is_relative_to(REPO):
        raise TokenError(f"{host}: k3s.token_file {path} is inside the repository; keep the cluster token "
                         "outside it (the default is ~/.config/numa-k3s/{host}.token)")
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise TokenError(f"{host}: the cluster token file {path} is readable by others (mode {mode:o}); "
                             f"fix it with: chmod 600 {path}")
        value = path.read_text().strip()
        if not value:
            raise TokenError(f"{host}: the cluster token file {path} is empty; delete it to generate a new token "
                             f"or put the cluster's token in it")
        return Secret(value)
    if not create:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    # O_EXCL: two runs racing never overwrite each other's token; the mode is set at creation.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Secret(value)
