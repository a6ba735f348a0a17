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
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit, ParseError
from invoke.program import Program
from invoke.tasks import task

from lib.errors import InventoryError, ToolError

if TYPE_CHECKING:  # pydantic's models cost ~0.1 s to import: only the tasks that read the inventory pay it
    from lib.inventory.load import Inventory, LoadedHost
    from lib.options import RunFlags
    from lib.output import Output
    from lib.results import HostRun
    from lib.runbook import Runbook
    from lib.sink import Sink

HERE = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])


_parse_tasks = Program.parse_tasks


def _parse_tasks_in_our_words(self: Program) -> None:
    """invoke's parser exits 1 with "No idea what '--restart' is!"; a mistyped task or flag is a bad
    flag like any other here: exit 2 with a suggestion. invoke has no hook for this, and this is the
    one place its Program reads the tasks' flags (after loading this file), so it is wrapped here."""
    from lib.grammar import parse_error

    try:
        _parse_tasks(self)
    except ParseError as exc:
        context = exc.context
        names = [n for name, aliases in self.collection.task_names.items() for n in (name, *aliases)]
        raise Exit(parse_error(str(exc), context.name if context else None,
                               context.flags if context else (), names), code=2) from None


Program.parse_tasks = _parse_tasks_in_our_words  # type: ignore[method-assign]


def _operator_errors(fn: F) -> F:
    """Typed errors become one clear message and their exit code; no traceback for user errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InventoryError as exc:  # VMs named, one line per root cause
            from lib.inventory.report import lines

            raise Exit("\n".join(lines(exc.problems)), code=exc.exit_code) from None
        except ToolError as exc:
            from lib.shell import terminal

            raise Exit(terminal(str(exc)), code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _task(help: dict[str, str] | None = None) -> Callable[[F], Any]:
    """An invoke task without short flags: `-h` stays help, and no letter means two things in two tasks."""

    def wrap(fn: F) -> Any:
        return task(auto_shortflags=False, help=help or {})(_operator_errors(fn))

    return wrap


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


_warned: set[str] = set()  # each warning once per invocation (monitor --watch loads the inventory per sample)


def _for_terminal(line: str) -> str:
    """A warning on stderr: wrapped between words when stderr is a terminal, whole otherwise (logs)."""
    from lib.shell import wrapped

    return wrapped(line, shutil.get_terminal_size().columns) if sys.stderr.isatty() else line


def _inventory(c: Context, host: str | None, applying: bool = False) -> Inventory:
    """The selected hosts' inventory, its warnings printed once. A run that applies refuses what is
    only a warning for commands that read: the spec's placeholder keys would lock the VM's user out."""
    from lib.errors import Problem
    from lib.inventory.keys import PLACEHOLDER_RULE
    from lib.inventory.load import load_inventory
    from lib.inventory.report import lines
    from lib.quickexit import skip_last_collection

    skip_last_collection()  # every command with an inventory is a short process: lib/quickexit.py
    inv = load_inventory(_hosts_dir(c), _names(host))
    if applying:
        refused = [Problem(p.rule, p.file, p.path, f"{p.message}; a run that changes hosts refuses it (plan and "
                           "inventory.check only warn)") for p in inv.warnings if p.rule == PLACEHOLDER_RULE]
        if refused:
            raise InventoryError(refused)
    for warning in lines(inv.warnings):
        if warning not in _warned:
            _warned.add(warning)
            print(_for_terminal(warning), file=sys.stderr)
    return inv


def _changing(c: Context, task_name: str, host: str | None, all_: bool) -> str | None:
    """A task that changes hosts runs on the hosts named, or on every one only with an explicit --all."""
    from lib.flags import FlagError
    from lib.inventory.load import host_names

    if host and all_:
        raise FlagError(f"{task_name}: give --host or --all, not both; nothing was done")
    if not host and not all_:
        names = host_names(_hosts_dir(c))
        raise FlagError(f"{task_name} changes hosts: say which with --host={' or --host='.join(names) or 'NAME'} "
                        f"(or --all for every host in {_hosts_dir(c)}); nothing was done")
    return host


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


@_task({"host": "host name(s), comma-separated; default: every hosts/*.yaml",
        "json": "print the result as JSON: per host its counts, and every error and warning"})
def check(c: Context, host: str | None = None, json: bool = False) -> None:
    """Validate the inventory: schema, pins, NUMA, memory, disks, k3s roles. Contacts no host."""
    if json:
        from lib.checks_json import inventory_json

        text, valid = inventory_json(_hosts_dir(c), _names(host))
        print(text)
        if not valid:
            raise Exit(code=2)
        return
    inv = _inventory(c, host)
    for name, loaded in inv.hosts.items():
        vms = loaded.host.vms
        warnings = sum(1 for w in inv.warnings if w.file == loaded.file)
        print(f"{name}: ok ({loaded.file}: {len(vms)} VMs, {sum(v.vcpu_count for v in vms)} vCPUs pinned, "
              f"{warnings} warnings)")


@_task({"host": "host name", "svg": "also write the picture to this SVG file",
            "html": "also write the picture to this HTML file"})
def topology(c: Context, host: str | None = None, svg: str | None = None, html: str | None = None) -> None:
    """Picture of the host: per socket and NUMA node, every core's threads and who owns them."""
    from lib.flags import output_file
    from lib.topoview import topology_picture
    from lib.vmview import vm_settings_table

    for flag, value in (("svg", svg), ("html", html)):
        if value is not None:
            output_file(flag, value)  # before any work: never draw, then fail to save
    refused: InventoryError | None = None
    try:
        loaded = _one(c, host)
    except InventoryError as exc:  # a picture of the overlap helps most now: drawn, then exit 2
        from lib.inventory.draft import load_despite_rules

        drawn = load_despite_rules(_hosts_dir(c), host) if host else None
        if drawn is None:
            raise
        loaded, refused = drawn, exc
    from lib.inventory.draft import conflict_cpus

    console = _console(record=bool(svg or html))
    console.print(topology_picture(loaded, conflict_cpus(loaded.host) if refused else frozenset()))
    if refused is not None:
        from lib.inventory.report import lines

        raise Exit("\n".join(lines(refused.problems)), code=2)
    console.print(vm_settings_table(loaded))
    if svg:
        console.save_svg(svg, title=f"{loaded.name} topology", clear=False)
        print(f"wrote {svg}")
    if html:
        console.save_html(html, clear=False)
        print(f"wrote {html}")


@_task({"host": "host name", "replan": "also show the pins the planner picks from counts and nodesets"})
def pins(c: Context, host: str | None = None, replan: bool = False) -> None:
    """vCPU pins per VM (given in the file or planned), with the planner's choice beside them."""
    from lib.pinplan import PlanError
    from lib.topoview import pins_table

    loaded = _one(c, host)
    replanned = None
    if replan:
        try:
            from lib.inventory.load import plan_host

            replanned = plan_host(loaded.host, loaded.cores, replan=True)
        except PlanError as exc:
            raise Exit(f"{loaded.name}: the planner cannot place every VM from its counts: {exc}", code=2) from None
    from lib.vmview import vm_settings_table

    _console().print(pins_table(loaded, replanned))
    _console().print(vm_settings_table(loaded))


# -- runbooks -----------------------------------------------------------------------------------

def _runbook(name: str) -> Runbook:
    from lib.flags import FlagError, did_you_mean
    from lib.runbook import load_runbook
    from lib.steps.registry import REGISTRY

    known = sorted(p.stem for p in (HERE / "runbooks").glob("*.yaml"))
    if name not in known:  # also keeps a name like ../x from reaching the file system
        raise FlagError(f"--runbook={name}: unknown runbook{did_you_mean(name, known)}; known: {', '.join(known)}")
    return load_runbook(HERE / "runbooks" / f"{name}.yaml", REGISTRY)


def _selection(book: Runbook, from_: str | None, only: str | None, skip: str | None) -> dict[str, Any]:
    """--from/--only/--skip checked against the runbook's steps (with a suggestion) before anything runs."""
    from lib.flags import FlagError, names

    where = f"runbook {book.name}"
    start = names("from", from_, book.names, "step", where)
    if len(start) > 1:
        raise FlagError(f"--from: one step, not {len(start)}")
    first = start[0] if start else None
    chosen_only = names("only", only, book.names, "step", where)
    chosen_skip = names("skip", skip, book.names, "step", where)
    from lib.grammar import empty_selection
    from lib.runbook import select

    steps, left_out = select(book, from_step=first, only=chosen_only, skip=chosen_skip)
    if not steps:
        raise FlagError(empty_selection(book.names, left_out, chosen_only, first, chosen_skip))
    return {"from_step": first, "only": chosen_only, "skip": chosen_skip}


def _again(task_name: str, **flags: object) -> Callable[[str], str]:
    """The command that runs this again on one host, with the flags that change what it does."""
    shown = "".join(f" --{k.rstrip('_').replace('_', '-')}" + ("" if v is True else f"={v}")
                    for k, v in flags.items() if v)
    return lambda h: f"invoke {task_name} --host={h}{shown}"


def _execute(c: Context, host: str | None, book: Runbook, mode: str, resume_command: Callable[[str], str],
             after: Callable[[list[HostRun]], None] | None = None, as_json: bool = False, vm: str | None = None,
             **opts: Any) -> None:
    """Run a runbook over the selected hosts, print the recap, exit with the run's code."""
    from lib.output import Output, recap
    from lib.runner import exit_code, failure_text

    plan = mode in ("plan", "offline")
    if plan:  # each step's plan as soon as it is known, with the bodies of the files it writes
        from lib.planview import PlanOutput, plan_summary

        output: Sink = PlanOutput(sys.stdout)
    else:
        output = Output(io.StringIO(), tty=False) if as_json else Output()
    runs = _run(c, host, book, output, mode=mode, resume_command=resume_command, vm=vm, **opts)
    if as_json:
        from lib.checks_json import runs_json

        print(runs_json(runs))
    elif mode == "verify":  # read-only checks: the evidence itself, one table per host, step and target
        from lib.output import verification_table

        for run in runs:
            # A failed step's table comes with the failure below: printed once, not twice.
            for result in (r for r in run.results if r.checks and r.status != "failed"):
                print(f"\n{run.host} | {result.step} | {result.target}\n{verification_table(result)}")
    if not as_json:
        print(recap(runs, book.names, times=not plan))
    if plan:
        print(plan_summary(runs))
        for run in runs:
            journal = _runs_dir(c) / run.host / run.run_id / "journal.jsonl"
            print(f"{run.host}: every command and file in full: {journal}")
    if after and not as_json:
        after(runs)
    code = exit_code(runs)
    if code:
        from lib.shell import terminal

        raise Exit(terminal(failure_text(runs)), code=code)


@_task({"runbook": "runbook name under runbooks/ (default: provision)"})
def steps(c: Context, runbook: str = "provision") -> None:
    """List the steps of a runbook, one line each: order, name, where it runs, what it does."""
    book = _runbook(runbook)
    print(f"{book.name}: {book.description}".rstrip(": "))
    for i, step in enumerate(book.steps, 1):
        print(f"{i:>2}. {step.name:<18} {step.targets:<10} {step.summary}")


_SELECT = {"from": "start at this step", "only": "run only these steps (comma-separated)",
           "skip": "leave out these steps (comma-separated)",
           "runbook": "runbook name under runbooks/ (default: provision)",
           "redefine": "replace a domain whose definition drifted from the spec (it must be shut off; disks kept)",
           "vm": "only these VMs (comma-separated) in the steps that run per VM; hypervisor steps run as usual"}
_CHANGES = {"host": "hypervisor(s), comma-separated; they run at once (required: this changes hosts)",
            "all": "every host in hosts/ (instead of --host)"}
_RESTART_HELP = {
    "restart": "apply changes a running VM cannot take (vCPUs, memory, disks): drain its node, ACPI "
               "shutdown, redefine, start, uncordon; one VM at a time, agents before the server",
    "force-off": "with --restart: power a VM off when it has not shut down by the deadline",
    "drain-timeout": "with --restart: seconds kubectl drain may take (default 300)",
    "shutdown-timeout": "with --restart: seconds the ACPI shutdown may take (default 120)",
}


_REBOOT_HELP = {"reboot": "host.reboot: reboot a hypervisor whose running kernel lacks tuning.kernel_isolation's "
                          "arguments (every VM on it stops), then verify /proc/cmdline"}


@_task({**_CHANGES, **_SELECT, **_RESTART_HELP, **_REBOOT_HELP,
        "resume": "continue after the last verified step of the last run"})
def provision(c: Context, host: str | None = None, all_: bool = False, resume: bool = False,
              from_: str | None = None, only: str | None = None, skip: str | None = None,
              runbook: str = "provision", redefine: bool = False, vm: str | None = None, restart: bool = False,
              force_off: bool = False, drain_timeout: str = "0", shutdown_timeout: str = "0",
              reboot: bool = False) -> None:
    """Run a runbook on the host(s): every step verified, records under .runs/<host>/<run-id>/."""
    day_two = _day_two(restart, force_off, drain_timeout, shutdown_timeout, reboot)
    host = _changing(c, "provision", host, all_)
    book = _runbook(runbook)
    again = _again("provision", runbook=runbook if runbook != "provision" else None, redefine=redefine, vm=vm,
                   **_shown(day_two), resume=True)
    _execute(c, host, book, "apply", again, resume=resume, vm=vm, flags=replace(day_two, redefine=redefine),
             **_selection(book, from_, only, skip))


def _day_two(restart: bool, force_off: bool, drain_timeout: str, shutdown_timeout: str, reboot: bool) -> RunFlags:
    """The day-two flags a run passes its steps; a timeout without --restart is refused."""
    from lib.flags import FlagError, number
    from lib.options import RunFlags

    drain = number("drain-timeout", drain_timeout, low=0, high=86400)
    shutdown = number("shutdown-timeout", shutdown_timeout, low=0, high=86400)
    if (force_off or drain or shutdown) and not restart:
        raise FlagError("--force-off, --drain-timeout and --shutdown-timeout only go with --restart")
    return RunFlags(restart=restart, force_off=force_off, drain_timeout=int(drain), shutdown_timeout=int(shutdown),
                    reboot=reboot)


def _shown(day_two: RunFlags) -> dict[str, object]:
    """The day-two flags given, as the command that runs this again shows them (in this order)."""
    given = {"restart": day_two.restart, "force_off": day_two.force_off, "drain_timeout": day_two.drain_timeout,
             "shutdown_timeout": day_two.shutdown_timeout, "reboot": day_two.reboot}
    return {k: v for k, v in given.items() if v}


@_task({"host": "hypervisor(s), comma-separated", "offline": "from the inventory alone, contact no host", **_SELECT,
        **_RESTART_HELP, **_REBOOT_HELP})
def plan(c: Context, host: str | None = None, offline: bool = False, runbook: str = "provision",
         from_: str | None = None, only: str | None = None, skip: str | None = None, redefine: bool = False,
         vm: str | None = None, restart: bool = False, force_off: bool = False, drain_timeout: str = "0",
         shutdown_timeout: str = "0", reboot: bool = False) -> None:
    """What provision would do, per step and host: the commands, the files' bodies and diffs, and with
    provision's --restart or --reboot the drain, shutdown, restart and reboot sequence. Changes nothing."""
    day_two = _day_two(restart, force_off, drain_timeout, shutdown_timeout, reboot)
    book = _runbook(runbook)
    again = _again("plan", offline=offline, runbook=runbook if runbook != "provision" else None,
                   redefine=redefine, vm=vm, **_shown(day_two))
    _execute(c, host, book, "offline" if offline else "plan", again, vm=vm, flags=replace(day_two, redefine=redefine),
             **_selection(book, from_, only, skip))


@_task({**_CHANGES, "redefine": "vms.define: replace a drifted domain (shut off; disks kept)",
        "vm": _SELECT["vm"], "yes": "teardown steps: really delete",
        "include-data": "teardown steps: also delete the data disks", **_RESTART_HELP, **_REBOOT_HELP})
def step(c: Context, name: str, host: str | None = None, all_: bool = False, redefine: bool = False,
         yes: bool = False, include_data: bool = False, vm: str | None = None, restart: bool = False,
         force_off: bool = False, drain_timeout: str = "0", shutdown_timeout: str = "0", reboot: bool = False) -> None:
    """Run one step (and its verification) ad hoc, e.g. invoke step host.tune --host=hv1."""
    if name in ("-h", "--help"):  # invoke hands a positional argument any word, even -h: help it is
        _task_help("step", step)
        return
    book = _single(name)
    host = _changing(c, "step", host, all_)
    flags = replace(_day_two(restart, force_off, drain_timeout, shutdown_timeout, reboot), redefine=redefine, yes=yes,
                    include_data=include_data)
    again = _again(f"step {name}", vm=vm, redefine=redefine, yes=yes, include_data=include_data, **_shown(flags))
    _execute(c, host, book, "apply", again, vm=vm, flags=flags)


@_task({**_CHANGES, "yes": "really delete (without it: print what would be deleted, delete nothing)",
        "include-data": "also delete the data VM's hot and cold disks (never the base image)"})
def teardown(c: Context, host: str | None = None, all_: bool = False, yes: bool = False,
             include_data: bool = False) -> None:
    """Undo provision: the plan of what would be deleted first, then (only with --yes) delete it."""
    from lib.options import RunFlags

    host = _changing(c, "teardown", host, all_)
    book = _runbook("teardown")
    flags = RunFlags(include_data=include_data)
    if yes:  # what the deleting run would refuse is refused before its plan contacts the host
        _inventory(c, host, applying=True)
    _execute(c, host, book, "plan", _again("teardown", include_data=include_data), flags=flags)
    if not yes:
        shown = " --include-data" if include_data else ""
        where = f"--host={host}" if host else "--all"
        print(f"Nothing was deleted. To delete the above: invoke teardown {where}{shown} --yes")
        return
    _execute(c, host, book, "apply", _again("teardown", include_data=include_data, yes=True),
             flags=replace(flags, yes=True))


def _task_help(name: str, body: Any) -> None:
    """invoke's own per-task help layout, for a task whose positional argument swallowed -h."""
    print(f"Usage: inv[oke] [--core-opts] {name} [--options] [other tasks here ...]\n\nDocstring:\n  "
          f"{(body.__doc__ or '').strip()}\n\nOptions:")
    for arg in body.get_arguments():
        spelled = f"--{arg.name.rstrip('_').replace('_', '-')}" + ("" if arg.kind is bool else "=STRING")
        print(f"  {spelled:<22} {arg.help or ''}".rstrip())


def _single(name: str) -> Runbook:
    from lib.flags import did_you_mean
    from lib.runbook import Runbook, RunbookError
    from lib.steps.registry import REGISTRY

    if name not in REGISTRY:
        raise RunbookError(f"unknown step {name!r}{did_you_mean(name, REGISTRY)}; known steps: "
                           f"{', '.join(sorted(REGISTRY))}")
    return Runbook(f"step-{name}", "", REGISTRY[name].summary, (REGISTRY[name](),))


# -- read-only verifications ---------------------------------------------------------------------

_VERIFY = {"host": "hypervisor(s), comma-separated", "json": "print every check as JSON (numbers as numbers)"}


def _verify(c: Context, host: str | None, book: Runbook, task_name: str, as_json: bool, **opts: Any) -> None:
    _execute(c, host, book, "verify", _again(task_name), as_json=as_json, **opts)


@_task(_VERIFY)
def verify_bios(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only: CPU topology, NUMA, L3, VT-x/AMD-V, IOMMU and BIOS against the inventory."""
    _verify(c, host, _single("bios.check"), "verify.bios", json)


@_task(_VERIFY)
def verify_tuning(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only: governor, numa_balancing, THP, host confinement, live and persisted; kernel isolation."""
    _verify(c, host, _book("verify-tuning", "host.tune", "host.isolation"), "verify.tuning", json)


@_task(_VERIFY)
def verify_images(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only: every VM disk's format, backing file and virtual size against the inventory."""
    _verify(c, host, _single("images.clone"), "verify.images", json)


@_task(_VERIFY)
def verify_vms(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only: each domain's definition (pins, emulatorpin, numatune, disks) and live state and pins."""
    _verify(c, host, _book("verify-vms", "vms.define", "vms.start"), "verify.vms", json)


@_task(_VERIFY)
def verify_k3s(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only: every node Ready, its role, taints, version; it takes pods tolerating its taints; the add-ons run."""
    _verify(c, host, _book("verify-k3s", "k3s.addons", "k3s.taints"), "verify.k3s", json)


def _book(name: str, *steps: str) -> Runbook:
    from lib.runbook import Runbook
    from lib.steps.registry import REGISTRY

    return Runbook(name, "", name, tuple(REGISTRY[s]() for s in steps))


def _interval(value: str) -> float:
    from lib.flags import number

    return number("interval", value, low=0, high=3600, low_open=True)


@_task({**_VERIFY, "max-remote": "largest share of memory off the VM's nodes, in percent, 0-100 (the spec: 1)"})
def verify_numa(c: Context, host: str | None = None, max_remote: str = "1", json: bool = False) -> None:
    """Read-only: each VM's QEMU memory per node, the share off its nodeset, numatune strict."""
    from lib.flags import number
    from lib.options import RunFlags

    share = number("max-remote", max_remote, low=0, high=100)
    _verify(c, host, _book("verify-numa", "numa.check"), "verify.numa", json, flags=RunFlags(max_remote=share / 100))


@_task({**_VERIFY, "interval": "sampling interval in seconds, up to 3600 (default 1)"})
def verify_emulator(c: Context, host: str | None = None, interval: str = "1", json: bool = False) -> None:
    """Read-only: each VM's emulator threads under 50% of their cpuset over an interval; the busiest named."""
    from lib.options import RunFlags

    _verify(c, host, _book("verify-emulator", "emulator.check"), "verify.emulator", json,
            flags=RunFlags(interval=_interval(interval)), after=_busiest_emulator)


def _busiest_emulator(runs: list[HostRun]) -> None:
    loads = {(run.host, r.target): c.found for run in runs for r in run.results for c in r.checks
             if c.name == "emulator load"}
    if loads:
        (hv, vm), value = max(loads.items(), key=lambda kv: float(kv[1].rstrip("%")))
        print(f"\nbusiest emulator: {vm} on {hv} ({value} of its emulator cpuset)")


# Every read-only verification there is, in runbook order; verify.all runs each even after a failure.
VERIFY_ALL = ("preflight.access", "bios.check", "host.tune", "host.isolation", "host.reboot", "vms.unmanaged",
              "images.clone", "cloudinit.build", "disks.owned", "vms.restart.agents", "vms.restart.server",
              "vms.define", "vms.start",
              "k3s.server", "k3s.addons", "k3s.agents", "k3s.taints", "numa.check", "emulator.check")


@_task(_VERIFY)
def verify_all(c: Context, host: str | None = None, json: bool = False) -> None:
    _verify(c, host, _book("verify-all", *VERIFY_ALL), "verify.all", json)


verify_all.__doc__ = ("Read-only: every verification in one run, each even after an earlier one fails: "
                      + ", ".join(VERIFY_ALL) + ".")


@_task({"host": "hypervisor", "interval": "seconds per sample, up to 3600 (default 1)",
        "watch": "repeat until Ctrl-C: a live screen on a terminal, timestamped samples otherwise; exit 5 if a "
                 "threshold was breached", "json": "print the metrics as JSON, for scripts",
        "count": "with --watch: stop after this many samples (default 0: until Ctrl-C)",
        "prometheus": "write the metrics in the Prometheus text format to this file (node_exporter's textfile "
                      "collector directory, e.g. /var/lib/node_exporter/textfile/numa_k3s.prom); a lone dash: stdout"})
def monitor(c: Context, host: str | None = None, interval: str = "1", watch: bool = False,
            json: bool = False, count: str = "0", prometheus: str | None = None) -> None:
    """The spec's key metrics, one table per VM: vCPU use and wait, NUMA, emulator CPU, LLC."""
    from lib.flags import number
    from lib.monitor.show import show_prometheus, show_runs

    seconds = _interval(interval)
    if prometheus is not None and prometheus != "-":
        from lib.flags import output_file

        output_file("prometheus", prometheus)  # before any sampling: never sample, then fail to save
    samples = number("count", count, low=0, high=1_000_000)
    from lib.flags import FlagError

    if samples != int(samples):
        raise FlagError(f"--count={count}: a whole number of samples")
    if samples and not watch:  # one sample is what monitor takes without --watch: a count would be ignored
        raise FlagError(f"--count={count} only goes with --watch (monitor without --watch takes one sample)")
    if watch:
        from lib.monitor.watch import watch_samples

        def sample() -> Any:  # a host that cannot be read ends the watch with its error (exit 4)
            runs = _sample(c, host, seconds)
            _unread_exit(runs)
            return runs

        breached = watch_samples(sample, as_json=json, count=int(samples))
        if breached:
            raise Exit(f"monitor: thresholds were breached in {breached} sample(s) during the watch", code=5)
        return
    runs = _sample(c, host, seconds, records=True, prometheus=bool(prometheus))
    if prometheus:
        show_prometheus(runs, prometheus)
    else:
        show_runs(runs, as_json=json)
    _unread_exit(runs)


def _sample(c: Context, host: str | None, seconds: float, records: bool = False,
            prometheus: bool = False) -> list[HostRun]:
    """One monitor sample; a watch keeps no run directory per sample (records=False)."""
    from lib.options import RunFlags

    return _run_quiet(c, host, _book("monitor", "monitor.sample"), RunFlags(interval=seconds, prometheus=prometheus),
                      records=records)


@_task({"host": "hypervisor(s), comma-separated", "json": "print the rows as JSON"})
def status(c: Context, host: str | None = None, json: bool = False) -> None:
    """One row per VM: state, pins ok or drifted, memory node, k3s node Ready, taints ok. Read-only."""
    import tempfile

    from lib.runbook import Runbook
    from lib.status import as_json, rows, table
    from lib.steps.status import StatusK3s, StatusVms

    book = Runbook("status", "", "status", (StatusVms(), StatusK3s()))
    # One libvirt read per VM and one `kubectl get nodes` on the server; no records kept for a glance.
    with tempfile.TemporaryDirectory(prefix="numa-k3s-status-") as tmp:
        runs = _run(c, host, book, _quiet(), mode="verify", runs_dir=Path(tmp))
    found = rows([r for r in runs if not r.error], _inventory(c, host).hosts)
    print(as_json(found) if json else table(found))
    # A cell that says "unknown" has a reason: the read that failed, named, and a non-zero exit.
    failed = [x for r in runs for x in r.results if x.status == "failed" and not x.checks]
    broken = [r for r in runs if r.error]
    for result in failed:
        print(f"{result.host} | {result.step} | {result.target}: could not read: "
              f"{(result.error.splitlines() or [''])[0]}", file=sys.stderr)
    if broken:
        from lib.runner import failure_text

        raise Exit(failure_text(broken), code=min(r.exit_code for r in broken))
    if failed:
        raise Exit(code=4)


def _quiet() -> Output:
    """An Output that keeps the per-step lines to itself: the caller prints its own view."""
    from lib.output import Output

    return Output(io.StringIO(), tty=False)


@_task({"host": "hypervisor", "interval": "seconds per sample, up to 3600 (default 1)"})
def doctor(c: Context, host: str | None = None, interval: str = "1") -> None:
    """The spec's troubleshooting table as checks: each finding with its symptom, evidence and fix."""
    from lib.monitor.show import show_findings
    from lib.options import RunFlags

    runs = _run_quiet(c, host, _book("doctor", "doctor"), RunFlags(interval=_interval(interval)))
    problems = show_findings(runs)
    _unread_exit(runs)  # a host not reached fails the command, whatever the others showed
    if problems:
        raise Exit(code=5)


@_task({"listen": "HOST:PORT to serve on (default 127.0.0.1:9464)",
        "interval": "seconds between the two samples of each rate, per probe (default 1)",
        "timeout": "a probe's budget when Prometheus sends no scrape timeout, in seconds (default 9.5)",
        "max_probes": "targets probed at once; more scrapes fail at once as busy (default 4)"})
def exporter(c: Context, listen: str = "127.0.0.1:9464", interval: str = "1", timeout: str = "9.5",
             max_probes: str = "4") -> None:
    """Prometheus exporter: /probe?target=HOST samples that host read-only (docs/metrics.md); until Ctrl-C."""
    from lib.exporter.server import Settings, serve
    from lib.flags import number
    from lib.retry import policies_from_config

    settings = Settings(interval=_interval(interval), timeout=number("timeout", timeout, low=0, high=3600,
                                                                     low_open=True),
                        max_probes=int(number("max-probes", max_probes, low=1, high=256)))
    serve(listen, _inventory(c, None).hosts, policies_from_config(c.config.get("retries")), settings)


def _runs_dir(c: Context) -> Path:
    from lib.flags import writable_dir

    runs_dir = Path(c.config.runs_dir).expanduser()
    return writable_dir("the runs directory", runs_dir if runs_dir.is_absolute() else HERE / runs_dir)


def _run(c: Context, host: str | None, book: Runbook, output: Sink, vm: str | None = None, runs_dir: Path | None = None,
         progress: bool = True, flags: RunFlags | None = None, **opts: Any) -> list[HostRun]:
    """The Engine over the selected hosts with this checkout's runs dir and invoke.yaml's retries."""
    from lib.flags import names
    from lib.options import RunFlags
    from lib.retry import policies_from_config
    from lib.runner import Engine, RunOptions

    inv = _inventory(c, host, applying=opts.get("mode") == "apply")
    flags = flags or RunFlags()
    if vm is not None:  # checked against the selected hosts' VMs before any host is contacted
        known = [v.name for loaded in inv.hosts.values() for v in loaded.host.vms]
        flags = replace(flags, vms=tuple(names("vm", vm, known, "VM", f"the VMs of {', '.join(inv.hosts)}")))
    options = RunOptions(runs_dir=runs_dir or _runs_dir(c), policies=policies_from_config(c.config.get("retries")),
                         flags=flags, **opts)
    # What is still waited on: in a live display's host line, else on stderr when it is a terminal;
    # monitor --watch's screen is its own progress (progress=False).
    if progress:
        from lib.progress import Ticker

        output = Ticker(output, live=bool(getattr(output, "tty", False)))
    engine = Engine(book, options, output)
    # Only a run that changes hosts stops between commands; a read-only one (verify, plan, monitor
    # --watch) has nothing half-done to protect and ends at Ctrl-C as any command does.
    stopping = _stopped_by_signals(engine, output.message) if options.mode == "apply" else contextlib.nullcontext()
    try:
        with stopping:
            return engine.run(list(inv.hosts.values()))
    finally:
        output.close()


class _Interruptible(Protocol):
    """What Ctrl-C stops: the Engine, or a fleet's hosts in flight."""

    def interrupt(self) -> None: ...


@contextlib.contextmanager
def _stopped_by_signals(engine: _Interruptible, say: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C or SIGTERM: let the commands in flight finish, then stop and record where; again: abandon.

    A command cut off halfway could leave a host half-changed; a run that stops between commands is
    recorded as interrupted, releases its lock and prints the command that resumes it.
    """
    def first(signum: int, _frame: Any) -> None:
        say(f"{signal.Signals(signum).name}: stopping after the commands in flight (again to abandon "
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


def _run_quiet(c: Context, host: str | None, book: Runbook, flags: RunFlags,
               records: bool = True) -> list[HostRun]:
    """Verify mode without the per-step lines: the caller prints its own view of the checks, then
    calls _unread_exit, so a host that could not be read fails the command after its rows are shown.

    records=False (each sample of monitor --watch): the run's records go to a temporary directory
    that is removed afterwards, so a watch does not leave a run directory per sample.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="numa-k3s-sample-") if not records else contextlib.nullcontext() as tmp:
        runs = _run(c, host, book, _quiet(), mode="verify", flags=flags,
                    runs_dir=Path(tmp) if tmp else None, progress=records)  # a watch's screen is its progress
    if records:
        for run in runs:
            print(f"{run.host}: records: {run.records}", file=sys.stderr)
    return runs


def _unread_exit(runs: list[HostRun]) -> None:
    """A host or target that could not be read fails the command (exit 4), named, whatever was shown."""
    from lib.monitor.show import unread

    missed = unread(runs)
    if missed:
        lines = [f"{r.host}: {r.step} on {r.target} could not be read: {r.error}" for r in missed]
        raise Exit("\n".join(lines), code=min(r.exit_code or 4 for r in missed))


# -- fleets: many hypervisors in waves with a failure budget (lib/fleet/, docs/fleets.md) --------------

_FLEET = {"host": "hypervisors, comma-separated", "all": "every host in hosts/", "site": "every host of this site",
          "waves": "wave sizes as Ansible's serial: e.g. 1,10%,50%,100% (the last repeats; default: one wave)",
          "max-fail": "failures tolerated per wave and overall, N or N% (exceeded only when failures go over it; "
                      "default 0)",
          "per-site": "at most this many hosts of one site at once (default 0: no limit)",
          "pause": "between waves, wait for `invoke fleet.approve`",
          "soak": "between waves, wait S seconds, then re-verify the finished waves' hosts"}


_ENGINE = {"engine": "local (default: this control node) or temporal (workers on any control node)",
           "address": "with --engine=temporal: host:port of the Temporal frontend (invoke.yaml temporal.address)",
           "namespace": "with --engine=temporal: the Temporal namespace (invoke.yaml temporal.namespace)",
           "task-queue": "with --engine=temporal: the workflows' task queue (invoke.yaml temporal.task_queue)"}


def _fleet_flags(host: str | None, all_: bool, site: str | None, waves: str | None, max_fail: str | None,
                 per_site: str | None, pause: bool, soak: str | None) -> Any:
    from lib.fleet.front import RolloutFlags

    return RolloutFlags(host, all_, site, waves, max_fail, per_site, pause, soak)


@_task(_FLEET)
def fleet_plan(c: Context, host: str | None = None, all_: bool = False, site: str | None = None,
               waves: str | None = None, max_fail: str | None = None, per_site: str | None = None,
               pause: bool = False, soak: str | None = None) -> None:
    """The wave plan of a rollout: which hosts in which wave, the budget, what happens between waves."""
    from lib.fleet.front import plan_from_flags, sites_of
    from lib.fleet.plan import plan_text

    flags = _fleet_flags(host, all_, site, waves, max_fail, per_site, pause, soak)
    print(plan_text(plan_from_flags(sites_of(_inventory(c, None).hosts), flags)))


@_task({**_FLEET, "runbook": "runbook name under runbooks/ (default: provision)",
        "resume": "continue the last fleet run (or --run=ID): verified hosts are skipped, failed and unstarted ones "
                  "run again", "run": "with --resume: the fleet run id",
        "parallel": "at most this many hosts at once (default: as many as 4 descriptors per host allow)",
        **_ENGINE})
def fleet_provision(c: Context, host: str | None = None, all_: bool = False, site: str | None = None,
                    waves: str | None = None, max_fail: str | None = None, per_site: str | None = None,
                    pause: bool = False, soak: str | None = None, runbook: str | None = None, resume: bool = False,
                    run: str | None = None, parallel: str = "0", engine: str = "local", address: str | None = None,
                    namespace: str | None = None, task_queue: str | None = None) -> None:
    """Roll a runbook across hosts in waves: the first wave is the canary; stops when the budget is exceeded."""
    from lib.flags import FlagError, number
    from lib.fleet.front import new_state, plan_from_flags, resumed, run_local, sites_of
    from lib.fleet.hostrun import HostRunner
    from lib.fleet.plan import plan_text
    from lib.retry import policies_from_config

    flags = _fleet_flags(host, all_, site, waves, max_fail, per_site, pause, soak)
    slots = number("parallel", parallel, low=0, high=100_000)
    if run is not None and not resume:
        raise FlagError("--run goes with --resume (which fleet run to continue)")
    temporal = _temporal(c, engine, address, namespace, task_queue)  # checked before any work
    runs_dir = _runs_dir(c)
    inv = _inventory(c, None)
    if resume:
        state, plan = resumed(runs_dir, run, flags)
        if runbook is not None and runbook != state.runbook:
            raise FlagError(f"--runbook={runbook}: fleet run {state.run_id} rolls out {state.runbook}")
        if state.engine != engine:
            raise FlagError(f"fleet run {state.run_id} ran on the {state.engine} engine: resume it with "
                            f"--engine={state.engine}")
    else:
        plan = plan_from_flags(sites_of(inv.hosts), flags)
        state = new_state(plan, runbook or "provision", engine)
        print(plan_text(plan))
    book = _runbook(state.runbook)
    if temporal is not None:
        from lib.fleet.temporal.client import run_rollout

        policies = policies_from_config(c.config.get("retries"))
        record = run_rollout(temporal, plan, state, book.names, int(slots), policies, runs_dir, _Say().message)
        _fleet_end(record, runs_dir)
        return
    shown = "" if state.runbook == "provision" else f" --runbook={state.runbook}"
    runner = HostRunner(book, runs_dir, policies_from_config(c.config.get("retries")), resume_command=lambda h: (
        f"{state.resume} (one host: invoke provision --host={h}{shown} --resume)"))
    output = _Say()
    holder: list[Any] = []
    with _stopped_by_signals(_Stoppable(holder), output.message):
        record = run_local(plan, state, inv.hosts, runner, runs_dir, say=output.message, parallel=int(slots),
                           resume=resume, started=holder.append)
    _fleet_end(record, runs_dir)


def _fleet_end(record: Any, runs_dir: Path) -> None:
    from lib.fleet.show import exit_code, recap, verdict

    print(recap(record.state, runs_dir))
    code = exit_code(record.state)
    if code:
        raise Exit(verdict(record.state, record.dir), code=code)


def _temporal(c: Context, engine: str, address: str | None, namespace: str | None, task_queue: str | None) -> Any:
    """The Temporal settings for --engine=temporal (None for the local engine); temporalio is not imported here."""
    from lib.flags import FlagError

    if engine not in ("local", "temporal"):
        raise FlagError(f"--engine={engine}: local or temporal")
    if engine == "local":
        if address or namespace or task_queue:
            raise FlagError("--address, --namespace and --task-queue go with --engine=temporal")
        return None
    from lib.fleet.temporal.config import temporal_config

    return temporal_config(c.config.get("temporal"), address=address, namespace=namespace, task_queue=task_queue)


class _Say:
    """The fleet's progress: one plain line each (hosts finish in any order; no live lines to fight over)."""

    def message(self, text: str) -> None:
        from lib.shell import mask

        print(mask(text), flush=True)


class _Stoppable:
    def __init__(self, holder: list[Any]) -> None:
        self.holder = holder

    def interrupt(self) -> None:
        for rollout in self.holder:
            rollout.interrupt()


@_task({"run": "fleet run id (default: the latest; required with --engine=temporal)",
        "json": "print the fleet record as JSON", **_ENGINE})
def fleet_status(c: Context, run: str | None = None, json: bool = False, engine: str = "local",
                 address: str | None = None, namespace: str | None = None, task_queue: str | None = None) -> None:
    """A rollout's state: per host its wave, site, outcome, failed step and records (Temporal: from any node)."""
    from lib.fleet.record import FLEET_DIR, load
    from lib.fleet.show import recap, verdict

    temporal = _temporal(c, engine, address, namespace, task_queue)
    runs_dir = _runs_dir(c)
    if temporal is not None:
        from lib.fleet.temporal.client import rollout_state, run_async

        state = run_async(rollout_state(temporal, _fleet_run(run)))
    else:
        state = load(runs_dir, run)
    if json:
        import json as json_

        print(json_.dumps(state.to_json(), indent=2))
        return
    print(recap(state, runs_dir))
    print(verdict(state, runs_dir / FLEET_DIR / state.run_id))


@_task({"run": "fleet run id (default: the latest; required with --engine=temporal)", **_ENGINE})
def fleet_approve(c: Context, run: str | None = None, engine: str = "local", address: str | None = None,
                  namespace: str | None = None, task_queue: str | None = None) -> None:
    """Let a rollout paused between waves (--pause) start its next wave."""
    temporal = _temporal(c, engine, address, namespace, task_queue)
    if temporal is not None:
        from lib.fleet.temporal.client import approve as approve_temporal
        from lib.fleet.temporal.client import run_async

        state, wave = run_async(approve_temporal(temporal, _fleet_run(run)))
    else:
        from lib.fleet.record import approve

        state, wave = approve(_runs_dir(c), run)
    print(f"fleet run {state.run_id}: wave {wave} approved")


def _fleet_run(run: str | None) -> str:
    from lib.flags import FlagError

    if not run:
        raise FlagError("--engine=temporal: say which rollout with --run=ID (fleet.provision printed it)")
    return run


@_task({"task-queue": "the queue of the steps this worker runs: a site's name for its hosts (default: the main "
                      "queue, for hosts without a site)",
        "address": _ENGINE["address"], "namespace": _ENGINE["namespace"]})
def fleet_worker(c: Context, task_queue: str | None = None, address: str | None = None,
                 namespace: str | None = None) -> None:
    """A Temporal worker: rollout workflows, and the steps of one site's hosts; until Ctrl-C or SIGTERM."""
    from lib.fleet.front import fd_limit
    from lib.fleet.temporal.client import run_async
    from lib.fleet.temporal.config import temporal_config
    from lib.fleet.temporal.worker import serve
    from lib.retry import policies_from_config

    config = temporal_config(c.config.get("temporal"), address=address, namespace=namespace)
    books = {p.stem: _runbook(p.stem) for p in sorted((HERE / "runbooks").glob("*.yaml"))}
    inv = _inventory(c, None)
    run_async(serve(config, task_queue or config.task_queue, inv, _hosts_dir(c), _runs_dir(c), books,
                    policies_from_config(c.config.get("retries")), fd_limit()))


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
fleet = Collection("fleet")
fleet.add_task(fleet_plan, "plan")
fleet.add_task(fleet_provision, "provision")
fleet.add_task(fleet_status, "status")
fleet.add_task(fleet_approve, "approve")
fleet.add_task(fleet_worker, "worker")
ns = Collection(topology, pins, steps, provision, plan, step, teardown, status, monitor, doctor, exporter, inventory,
                verify, fleet)
ns.configure({"hosts_dir": "hosts", "runs_dir": ".runs"})
