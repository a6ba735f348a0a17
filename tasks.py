"""Invoke front: parse flags, call lib/, turn typed errors into exit codes. Nothing else lives here.

    invoke inventory.check [--host=NAME]   validate hosts/*.yaml (exit 2 on any error)
    invoke topology --host=hv1 [--svg F]    the host's cores, threads, owners and memory
    invoke pins --host=hv1 [--replan]       vCPU pins per VM, given or planned
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from lib.errors import ToolError
from lib.inventory.load import Inventory, LoadedHost, load_inventory, plan_host

HERE = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])


def _operator_errors(fn: F) -> F:
    """Typed errors become one clear message and their exit code; no traceback for user errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolError as exc:
            raise Exit(str(exc), code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _names(host: str | None) -> list[str] | None:
    return [h.strip() for h in host.split(",") if h.strip()] if host else None


def _hosts_dir(c: Context) -> Path:
    """hosts_dir from invoke config (invoke.yaml, or INVOKE_HOSTS_DIR); relative to this repo."""
    path = Path(c.config.hosts_dir).expanduser()
    path = path if path.is_absolute() else HERE / path
    try:  # messages name files the way the operator sees them from here
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _inventory(c: Context, host: str | None) -> Inventory:
    inv = load_inventory(_hosts_dir(c), _names(host))
    for warning in inv.warnings:
        print(warning, file=sys.stderr)
    return inv


def _one(c: Context, host: str | None) -> LoadedHost:
    inv = _inventory(c, host)
    if len(inv.hosts) != 1:
        raise Exit(f"say which host: --host={' or --host='.join(inv.hosts)}", code=2)
    return next(iter(inv.hosts.values()))


def _console(record: bool = False) -> Any:
    from rich.console import Console

    console = Console(record=record)
    if record or not console.is_terminal:  # files and pipes get the full picture, not 80 columns
        console.width = 130
    return console


@task(help={"host": "host name(s), comma-separated; default: every hosts/*.yaml"})
@_operator_errors
def check(c: Context, host: str | None = None) -> None:
    """Validate the inventory: schema, pins, NUMA, memory, disks, k3s roles. Contacts no host."""
    inv = _inventory(c, host)
    for name, loaded in inv.hosts.items():
        vms = loaded.host.vms
        warnings = sum(1 for w in inv.warnings if w.file == loaded.file)
        print(f"{name}: ok ({loaded.file}: {len(vms)} VMs, {sum(v.vcpu_count for v in vms)} vCPUs pinned, "
              f"{warnings} warnings)")


@task(help={"host": "host name", "svg": "also write the picture to this SVG file",
            "html": "also write the picture to this HTML file"})
@_operator_errors
def topology(c: Context, host: str | None = None, svg: str | None = None, html: str | None = None) -> None:
    """Picture of the host: per socket and NUMA node, every core's threads and who owns them."""
    from lib.topoview import topology_picture

    loaded = _one(c, host)
    console = _console(record=bool(svg or html))
    console.print(topology_picture(loaded))
    if svg:
        console.save_svg(svg, title=f"{loaded.name} topology", clear=False)
        print(f"wrote {svg}")
    if html:
        console.save_html(html, clear=False)
        print(f"wrote {html}")


@task(help={"host": "host name", "replan": "also show the pins the planner picks from counts and nodesets"})
@_operator_errors
def pins(c: Context, host: str | None = None, replan: bool = False) -> None:
    """vCPU pins per VM (given in the file or planned), with the planner's choice beside them."""
    from lib.pinplan import PlanError
    from lib.topoview import pins_table

    loaded = _one(c, host)
    replanned = None
    if replan:
        try:
            replanned = plan_host(loaded.host, loaded.cores, replan=True)
        except PlanError as exc:
            raise Exit(f"{loaded.name}: the planner cannot place every VM from its counts: {exc}", code=2) from None
    _console().print(pins_table(loaded, replanned))


inventory = Collection("inventory", check)
ns = Collection(topology, pins, inventory)
ns.configure({"hosts_dir": "hosts"})
