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
from lib.smallfile import NotSmallFile, read_small

ENV = "NUMA_K3S_TOKEN"
REPO = Path(__file__).resolve().parents[1]
# 16 characters: a random token of this length from letters and digits holds ~95 bits, beyond any
# online guessing of the k3s join endpoint; and a value this long is no accident of plain words, so
# a weak choice such as `k3s` (a word of every step name) is refused rather than masked everywhere.
MIN_LENGTH = 16
MAX_FILE_BYTES = 4096  # a token file holds one line


class TokenError(ToolError):
    exit_code = 2


def token_path(token_file: str, host: str) -> Path:
    return Path(token_file.replace("{host}", host)).expanduser().absolute()


def cluster_token(token_file: str, host: str, *, create: bool,
                  environ: Mapping[str, str] = os.environ) -> Secret | None:
    if environ.get(ENV):  # set but empty: as if unset
        return _checked(environ[ENV], f"{host}: the cluster token in {ENV}", f"set {ENV} to the cluster's token, "
                        f"or unset it to use k3s.token_file")
    path = token_path(token_file, host)
    if path.is_relative_to(REPO):
        raise TokenError(f"{host}: k3s.token_file {path} is inside the repository; keep the cluster token "
                         "outside it (the default is ~/.config/numa-k3s/{host}.token)")
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise TokenError(f"{host}: the cluster token file {path} is readable by others (mode {mode:o}); "
                             f"fix it with: chmod 600 {path}")
        try:
            data = read_small(path, MAX_FILE_BYTES)
        except NotSmallFile as exc:
            raise TokenError(f"{host}: the cluster token file {path} is {exc}; it holds one line: the token") from None
        value = data.decode(errors="replace")
        if not value.strip():
            raise TokenError(f"{host}: the cluster token file {path} is empty; delete it to generate a new token "
                             f"or put the cluster's token in it")
        return _checked(value, f"{host}: the cluster token file {path}",
                        "delete it to generate a new token, or put the cluster's token in it")
    if not create:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    # O_EXCL: two runs racing never overwrite each other's token; the mode is set at creation.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Secret(value)


def _checked(raw: str, where: str, fix: str) -> Secret:
    """The token without its surrounding whitespace, refused (never quoted) when it is weak or not one word."""
    value = raw.strip()
    if not value:
        raise TokenError(f"{where} is empty or only whitespace; {fix}")
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise TokenError(f"{where} holds whitespace or control characters inside it; a token is one word: {fix}")
    if len(value) < MIN_LENGTH:
        raise TokenError(f"{where} is {len(value)} characters, fewer than {MIN_LENGTH}: too weak to guard the "
                         f"cluster's join; {fix} (a new one: openssl rand -hex 32)")
    return Secret(value)
