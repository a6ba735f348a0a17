"""Is cloud-init done on a guest: read from the files cloud-init documents, not by starting it.

`cloud-init status` starts cloud-init's Python, which under TCG with four guests on one CPU takes
over 30 s per guest and per verify (#30). cloud-init keeps its state in files it documents
("Boot stages" and `cloud-init status` in its docs; cloudinit/cmd/status.py reads the same ones):

- /run/cloud-init/status.json: {"v1": {"stage": <running stage or null>, "datasource": ...,
  "init-local"|"init"|"modules-config"|"modules-final": {"start": t, "finished": t, "errors": [...]}}}
- /run/cloud-init/result.json: written when modules-final ends: {"v1": {"datasource": ..., "errors": [...]}}

Both are links under /run (tmpfs) to /var/lib/cloud/data/: the /run links are made in this boot, so
they are read there, never the /var/lib copies a previous boot left behind. Where status.json is
absent (cloud-init not started yet in this boot, or a guest without it), `cloud-init status` answers.
"""

from __future__ import annotations

import json
from typing import Any

STATUS_JSON = "/run/cloud-init/status.json"
RESULT_JSON = "/run/cloud-init/result.json"
_MARK = "== numa-k3s:"  # a line of its own between the files' texts


def command(fallback_timeout: int) -> str:
    """The files when this boot's status.json exists, else `cloud-init status` (or "not installed")."""
    return (f"if [ -r {STATUS_JSON} ]; then echo '{_MARK} status.json'; cat {STATUS_JSON}; echo; "
            f"echo '{_MARK} result.json'; cat {RESULT_JSON} 2>/dev/null; echo; "
            f"elif command -v cloud-init >/dev/null 2>&1; then timeout {fallback_timeout} cloud-init status 2>&1 "
            "|| true; else echo 'status: not installed'; fi")


def _sections(output: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith(_MARK):
            name = line[len(_MARK):].strip()
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def _v1(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    v1 = data.get("v1") if isinstance(data, dict) else None
    return v1 if isinstance(v1, dict) else None


def from_files(status_json: str, result_json: str) -> str:
    """Pure: "done", "running", "error" or "not run", as `cloud-init status` decides from the same files."""
    status = _v1(status_json)
    if status is None:
        return "unreadable status.json"
    stages = {k: v for k, v in status.items() if isinstance(v, dict)}
    errors = [e for v in stages.values() for e in (v.get("errors") or [])]
    result = _v1(result_json)
    errors += [e for e in ((result or {}).get("errors") or []) if e not in errors]
    if errors:
        return "error"
    if result is None or status.get("stage") or any(v.get("start") and not v.get("finished") for v in stages.values()):
        return "running"
    return "done" if any(v.get("start") or v.get("finished") for v in stages.values()) else "not run"


def parse(output: str) -> str:
    """Pure: the command's answer as one word: the files' verdict, or `cloud-init status`'s own line."""
    files = _sections(output)
    if "status.json" in files:
        return from_files(files["status.json"], files.get("result.json", ""))
    return next((line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("status:")),
                output.strip() or "no answer")
