"""Invoke front: parse flags, call lib/, turn typed errors into exit codes. Nothing else lives here.

    invoke inventory.check [--host=NAME]    validate hosts/*.yaml (exit 2 on any error)
    invoke topology --host=hv1 [--svg F]     the host's cores, threads, owners and memory
    invoke pins --host=hv1 [--replan]        vCPU pins per VM, given or planned
    invoke steps [--runbook=provision]       the steps of a runbook, one line each
    invoke provision --host=hv1 [--resume]   run the provision runbook, verify after every step
    invoke plan --host=hv1 [--offline]       what provision would do; changes nothing
    invoke step NAME --host=hv1              one step and its verification
    invoke verify.bios|tuning|images --host  read-only checks

Exit codes: 2 bad inventory or arguments, 3 host does not match the inventory (preflight),
4 a step failed, 5 a verification failed, 6 another run holds the host lock, 130 stopped by Ctrl-C
or SIGTERM (after the commands in flight finished; --resume redoes the step).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator
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


# -- runbooks -----------------------------------------------------------------------------------

def _runbook(name: str) -> Any:
    from lib.runbook import load_runbook
    from lib.steps import REGISTRY

    return load_runbook(HERE / "runbooks" / f"{name}.yaml", REGISTRY)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _execute(c: Context, host: str | None, book: Any, mode: str, resume_command: Callable[[str], str],
             after: Callable[[list[Any]], None] | None = None, **opts: Any) -> None:
    """Run a runbook over the selected hosts, print the recap, exit with the run's code."""
    from lib.output import Output, plan_text, recap
    from lib.runner import exit_code, failure_text

    # Plan modes print the plan itself; per-step progress lines would only repeat it.
    quiet = mode in ("plan", "offline")
    runs = _run(c, host, book, Output(io.StringIO(), tty=False) if quiet else Output(), mode=mode,
                resume_command=resume_command, **opts)
    if quiet:
        print(plan_text(runs))
    if mode == "verify":  # read-only checks: the evidence itself, one table per host, step and target
        from lib.output import verification_table

        for run in runs:
            for result in (r for r in run.results if r.checks):
                print(f"\n{run.host} | {result.step} | {result.target}\n{verification_table(result)}")
    print(recap(runs, book.names))
    if after:
        after(runs)
    code = exit_code(runs)
    if code:
        raise Exit(failure_text(runs), code=code)


@task(help={"runbook": "runbook name under runbooks/ (default: provision)"})
@_operator_errors
def steps(c: Context, runbook: str = "provision") -> None:
    """List the steps of a runbook, one line each: order, name, where it runs, what it does."""
    book = _runbook(runbook)
    print(f"{book.name}: {book.description}".rstrip(": "))
    for i, step in enumerate(book.steps, 1):
        print(f"{i:>2}. {step.name:<18} {step.targets:<10} {step.summary}")


_RESTART_HELP = {
    "restart": "apply changes a running VM cannot take (vCPUs, memory, disks): drain its node, ACPI "
               "shutdown, redefine, start, uncordon; one VM at a time, agents before the server",
    "force-off": "with --restart: power a VM off when it has not shut down by the deadline",
    "drain-timeout": "with --restart: seconds kubectl drain may take (default 300)",
    "shutdown-timeout": "with --restart: seconds the ACPI shutdown may take (default 120)",
}


@task(help={
    "host": "hypervisor(s), comma-separated; they run at once",
    "resume": "continue after the last verified step of the last run",
    "from": "start at this step", "only": "run only these steps (comma-separated)",
    "skip": "leave out these steps (comma-separated)",
    "runbook": "runbook name under runbooks/ (default: provision)",
    "redefine": "replace a domain whose definition drifted from the spec (it must be shut off; disks kept)",
    **_RESTART_HELP,
})
@_operator_errors
def provision(c: Context, host: str | None = None, resume: bool = False, from_: str | None = None,
              only: str | None = None, skip: str | None = None, runbook: str = "provision",
              redefine: bool = False, restart: bool = False, force_off: bool = False, drain_timeout: int = 0,
              shutdown_timeout: int = 0) -> None:
    """Run a runbook on the host(s): every step verified, records under .runs/<host>/<run-id>/."""
    book = _runbook(runbook)
    day_two = _restart_flags(restart, force_off, drain_timeout, shutdown_timeout)
    extra = (("" if runbook == "provision" else f" --runbook={runbook}") + (" --redefine" if redefine else "")
             + _shown_flags(day_two))
    _execute(c, host, book, "apply", lambda h: f"invoke provision --host={h}{extra} --resume",
             resume=resume, from_step=from_, only=_split(only), skip=_split(skip),
             flags={"redefine": redefine, **day_two})


def _restart_flags(restart: bool, force_off: bool, drain_timeout: int, shutdown_timeout: int) -> dict[str, Any]:
    if (force_off or drain_timeout or shutdown_timeout) and not restart:
        raise Exit("--force-off, --drain-timeout and --shutdown-timeout only go with --restart", code=2)
    if drain_timeout < 0 or shutdown_timeout < 0:
        raise Exit("--drain-timeout and --shutdown-timeout are seconds, at least 1", code=2)
    flags = {"restart": restart, "force_off": force_off, "drain_timeout": drain_timeout,
             "shutdown_timeout": shutdown_timeout}
    return {k: v for k, v in flags.items() if v}


def _shown_flags(flags: dict[str, Any]) -> str:
    return "".join(f" --{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in flags.items())


@task(help={"host": "hypervisor(s), comma-separated", "offline": "from the inventory alone, contact no host",
            "runbook": "runbook name under runbooks/ (default: provision)"})
@_operator_errors
def plan(c: Context, host: str | None = None, offline: bool = False, runbook: str = "provision") -> None:
    """What provision would do, per step and host, and why the rest needs nothing. Changes nothing."""
    _execute(c, host, _runbook(runbook), "offline" if offline else "plan", lambda h: f"invoke plan --host={h}")


@task(help={"host": "hypervisor(s), comma-separated",
            "redefine": "vms.define: replace a drifted domain (shut off; disks kept)",
            "yes": "teardown steps: really delete", "include-data": "teardown steps: also delete the data disks",
            **_RESTART_HELP})
@_operator_errors
def step(c: Context, name: str, host: str | None = None, redefine: bool = False,
         yes: bool = False, include_data: bool = False, restart: bool = False, force_off: bool = False,
         drain_timeout: int = 0, shutdown_timeout: int = 0) -> None:
    """Run one step (and its verification) ad hoc, e.g. invoke step host.tune --host=hv1."""
    flags = {"redefine": redefine, "yes": yes, "include_data": include_data,
             **_restart_flags(restart, force_off, drain_timeout, shutdown_timeout)}
    shown = _shown_flags({k: v for k, v in flags.items() if v})
    _execute(c, host, _single(name), "apply", lambda h: f"invoke step {name} --host={h}{shown}",
             flags=flags)


@task(help={"host": "hypervisor(s), comma-separated",
            "yes": "really delete (without it: print what would be deleted, delete nothing)",
            "include-data": "also delete the data VM's hot and cold disks (never the base image)"})
@_operator_errors
def teardown(c: Context, host: str | None = None, yes: bool = False, include_data: bool = False) -> None:
    """Undo provision: the plan of what would be deleted first, then (only with --yes) delete it."""
    book = _runbook("teardown")
    flags = {"include_data": include_data}
    shown = " --include-data" if include_data else ""
    _execute(c, host, book, "plan", lambda h: f"invoke teardown --host={h}{shown}", flags=flags)
    if not yes:
        print(f"Nothing was deleted. To delete the above: invoke teardown --host={host or '<host>'}{shown} --yes")
        return
    _execute(c, host, book, "apply", lambda h: f"invoke teardown --host={h}{shown} --yes",
             flags={**flags, "yes": True})


def _single(name: str) -> Any:
    from lib.runbook import Runbook, RunbookError
    from lib.steps import REGISTRY

    if name not in REGISTRY:
        raise RunbookError(f"unknown step {name!r}; known steps: {', '.join(sorted(REGISTRY))}")
    return Runbook(f"step-{name}", "", REGISTRY[name].summary, (REGISTRY[name](),))


# -- read-only verifications ---------------------------------------------------------------------

def _verify(c: Context, host: str | None, name: str, task_name: str) -> None:
    _execute(c, host, _single(name), "verify", lambda h: f"invoke {task_name} --host={h}")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_bios(c: Context, host: str | None = None) -> None:
    """Read-only: CPU topology, NUMA, L3, VT-x/AMD-V, IOMMU and BIOS against the inventory."""
    _verify(c, host, "bios.check", "verify.bios")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_tuning(c: Context, host: str | None = None) -> None:
    """Read-only: governor, numa_balancing, THP, live and persisted, against the inventory."""
    _verify(c, host, "host.tune", "verify.tuning")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_images(c: Context, host: str | None = None) -> None:
    """Read-only: every VM disk's format, backing file and virtual size against the inventory."""
    _verify(c, host, "images.clone", "verify.images")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_vms(c: Context, host: str | None = None) -> None:
    """Read-only: each domain's definition (pins, emulatorpin, numatune, disks) and live state and pins."""
    _execute(c, host, _book("verify-vms", "vms.define", "vms.start"), "verify",
             lambda h: f"invoke verify.vms --host={h}")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_k3s(c: Context, host: str | None = None) -> None:
    """Read-only: every node Ready, its role, its taints exactly as the inventory says, its k3s version."""
    _verify(c, host, "k3s.taints", "verify.k3s")


def _book(name: str, *steps: str) -> Any:
    from lib.runbook import Runbook
    from lib.steps import REGISTRY

    return Runbook(name, "", name, tuple(REGISTRY[s]() for s in steps))


@task(help={"host": "hypervisor(s), comma-separated", "max-remote": "largest share of memory off the VM's "
            "nodes, in percent (the spec: 1)"})
@_operator_errors
def verify_numa(c: Context, host: str | None = None, max_remote: float = 1.0) -> None:
    """Read-only: each VM's QEMU memory per node, the share off its nodeset, numatune strict."""
    _execute(c, host, _book("verify-numa", "numa.check"), "verify", lambda h: f"invoke verify.numa --host={h}",
             flags={"max_remote": max_remote / 100})


@task(help={"host": "hypervisor(s), comma-separated", "interval": "sampling interval in seconds (default 1)"})
@_operator_errors
def verify_emulator(c: Context, host: str | None = None, interval: float = 1.0) -> None:
    """Read-only: each VM's emulator threads under 50% of their cpuset over an interval; the busiest named."""
    _execute(c, host, _book("verify-emulator", "emulator.check"), "verify",
             lambda h: f"invoke verify.emulator --host={h}", flags={"interval": interval}, after=_busiest_emulator)


def _busiest_emulator(runs: list[Any]) -> None:
    loads = {(run.host, r.target): c.found for run in runs for r in run.results for c in r.checks
             if c.name == "emulator load"}
    if loads:
        (hv, vm), value = max(loads.items(), key=lambda kv: float(kv[1].rstrip("%")))
        print(f"\nbusiest emulator: {vm} on {hv} ({value} of its emulator cpuset)")


@task(help={"host": "hypervisor(s), comma-separated"})
@_operator_errors
def verify_all(c: Context, host: str | None = None) -> None:
    """Read-only: every verification (bios, tuning, images, vms, k3s, numa, emulator) in one run."""
    book = _book("verify-all", "bios.check", "host.tune", "images.clone", "cloudinit.build", "vms.define",
                 "vms.start", "k3s.taints", "numa.check", "emulator.check")
    _execute(c, host, book, "verify", lambda h: f"invoke verify.all --host={h}")


@task(help={"host": "hypervisor", "interval": "seconds per sample (default 1)", "watch": "repeat until Ctrl-C",
            "json": "print the metrics as JSON, for scripts"})
@_operator_errors
def monitor(c: Context, host: str | None = None, interval: float = 1.0, watch: bool = False,
            json: bool = False) -> None:
    """The spec's key metrics, one table per VM: vCPU use and wait, NUMA, emulator CPU, LLC."""
    from lib.monitor.show import show_runs

    while True:
        runs = _run_quiet(c, host, _book("monitor", "monitor.sample"), {"interval": interval})
        show_runs(runs, as_json=json)
        if not watch:
            break


@task(help={"host": "hypervisor", "interval": "seconds per sample (default 1)"})
@_operator_errors
def doctor(c: Context, host: str | None = None, interval: float = 1.0) -> None:
    """The spec's troubleshooting table as checks: each finding with its symptom, evidence and fix."""
    from lib.monitor.show import show_findings

    runs = _run_quiet(c, host, _book("doctor", "doctor"), {"interval": interval})
    if show_findings(runs):
        raise Exit(code=5)


def _run(c: Context, host: str | None, book: Any, output: Any, **opts: Any) -> Any:
    """The Engine over the selected hosts with this checkout's runs dir and invoke.yaml's retries."""
    from lib.retry import policies_from_config
    from lib.runner import Engine, RunOptions

    inv = _inventory(c, host)
    runs_dir = Path(c.config.runs_dir)
    options = RunOptions(runs_dir=runs_dir if runs_dir.is_absolute() else HERE / runs_dir,
                         policies=policies_from_config(c.config.get("retries")), **opts)
    engine = Engine(book, options, output)
    # Only a run that changes hosts stops between commands; a read-only one (verify, plan, monitor
    # --watch) has nothing half-done to protect and ends at Ctrl-C as any command does.
    stopping = _stopped_by_signals(engine, output) if options.mode == "apply" else contextlib.nullcontext()
    try:
        with stopping:
            return engine.run(list(inv.hosts.values()))
    finally:
        output.close()


@contextlib.contextmanager
def _stopped_by_signals(engine: Any, output: Any) -> Iterator[None]:
    """Ctrl-C or SIGTERM: let the commands in flight finish, then stop and record where; again: abandon.

    A command cut off halfway could leave a host half-changed; a run that stops between commands is
    recorded as interrupted, releases its lock and prints the command that resumes it.
    """
    def first(signum: int, _frame: Any) -> None:
        output.message(f"{signal.Signals(signum).name}: stopping after the commands in flight (again to abandon "
                       "them at once; the next run breaks the stale lock and --resume redoes the step)")
        engine.interrupt()
        signal.signal(signal.SIGINT, again)
        signal.signal(signal.SIGTERM, again)

    def again(_signum: int, _frame: Any) -> None:
        os._exit(130)  # worker threads would otherwise be joined: the operator asked to go now

    saved = signal.signal(signal.SIGINT, first), signal.signal(signal.SIGTERM, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def _run_quiet(c: Context, host: str | None, book: Any, flags: dict[str, Any]) -> Any:
    """Verify mode without the per-step lines: the caller prints its own view of the checks."""
    from lib.output import Output
    from lib.runner import failure_text

    runs = _run(c, host, book, Output(io.StringIO(), tty=False), mode="verify", flags=flags)
    broken = [r for r in runs if r.error]  # could not even sample: say so, as any failure
    if broken:
        raise Exit(failure_text(broken), code=max(r.exit_code for r in broken))
    return runs


inventory = Collection("inventory", check)
verify = Collection("verify")
verify.add_task(verify_bios, "bios")
verify.add_task(verify_tuning, "tuning")
verify.add_task(verify_images, "images")
verify.add_task(verify_vms, "vms")
verify.add_task(verify_k3s, "k3s")
verify.add_task(verify_numa, "numa")
verify.add_task(verify_emulator, "emulator")
verify.add_task(verify_all, "all")
ns = Collection(topology, pins, steps, provision, plan, step, teardown, monitor, doctor, inventory, verify)
ns.configure({"hosts_dir": "hosts", "runs_dir": ".runs"})
