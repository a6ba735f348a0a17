"""SSH authorized keys from the inventory: one line each, a public key by ssh-keygen's own parser.

cloud-init writes every line of a key into authorized_keys, so a key with an embedded newline is
two keys (or one key and a line of junk); a private key named as a key file would be copied, whole,
into the plan, the run's records and the seed ISO. ssh-keygen -l is the oracle: what it cannot
fingerprint, sshd would not accept either.

The spec's placeholder (a body elided with `...`, as in hosts/hv1.yaml) is recognised by its shape:
a warning for commands that only read, refused by runs that apply (tasks.py promotes it).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

PLACEHOLDER_RULE = "key.placeholder"
# A key type, a base64 body cut short with "...", an optional comment.
_PLACEHOLDER = re.compile(r"(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]*\.\.\.( [^\n]*)?")
# PEM, OpenSSH and PuTTY private keys all say so in their first line.
_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----|^PuTTY-User-Key-File-", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    rule: str  # "" when the key is a good public key
    why: str = ""
    severity: str = "error"


OK = Verdict("")


def looks_private(text: str) -> bool:
    return bool(_PRIVATE.search(text))


def check_key(key: str) -> Verdict:
    """Why one authorized key (one entry of ssh_authorized_keys, or one line of a key file) is refused.

    The messages never quote the key: a refused key may be a secret pasted in the wrong place."""
    if looks_private(key):
        return Verdict("key.private", "is a PRIVATE key, not a public one; give the public key (the .pub file's "
                                      "line) and treat this private key as exposed")
    if "\n" in key or "\r" in key:
        lines = len(key.splitlines())
        return Verdict("key.multiline", f"holds {lines} lines; cloud-init would write each line into "
                                        "authorized_keys as a key of its own: give one key per list entry")
    if _PLACEHOLDER.fullmatch(key):
        return Verdict(PLACEHOLDER_RULE, "is the spec's placeholder (a key body elided with '...'), not a real key; "
                                         "put the VM user's real public key here before provisioning", "warning")
    return _fingerprint(key)


@functools.lru_cache(maxsize=256)
def _fingerprint(key: str) -> Verdict:
    """ssh-keygen -l -f on a file holding this one line (authorized_keys syntax: options allowed)."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        return Verdict("key.unchecked", "cannot be checked: ssh-keygen is not installed here (apt-get install "
                                        "openssh-client)")
    with tempfile.NamedTemporaryFile("w", prefix="numa-k3s-key-", suffix=".pub") as handle:
        handle.write(key + "\n")
        handle.flush()
        done = subprocess.run([tool, "-l", "-f", handle.name], capture_output=True, text=True, check=False,
                              timeout=30)
    if done.returncode != 0:
        return Verdict("key.invalid", "is not a public key (ssh-keygen -l cannot read it); give a line like "
                                      "'ssh-ed25519 AAAAC3Nza... user@host', as in ~/.ssh/id_ed25519.pub")
    return OK
