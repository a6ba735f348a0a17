"""Load hosts/<name>.yaml over hosts/defaults.yaml, validate, plan missing pins.

Every problem of every selected file is collected before anything is raised, so one run of
`invoke inventory.check` shows the operator the whole list. Nothing here touches a host.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from lib.errors import InventoryError, Problem, Severity
from lib.inventory.keys import check_key, looks_private
from lib.inventory.model import Host, is_name
from lib.inventory.rules import check_host, check_topology, inventory_threads, shape_name
from lib.pinplan import Core, PinRequest, PlanError, cores_from_threads, plan_pins, plan_what_fits
from lib.smallfile import NotSmallFile, read_small

DEFAULTS = "defaults.yaml"
# hv1.yaml is 8 KB; a host with a hundred VMs stays far below. Checked before the file is read.
MAX_FILE_BYTES = 1024 * 1024
# An authorized keys file holds a few lines of a few hundred bytes each.
MAX_KEY_FILE_BYTES = 64 * 1024
# No hosts file nests more than a handful of levels or holds more than a few thousand values; deeper
# data would only exhaust Python's recursion in validation and error messages (a recursive alias is
# infinitely deep), and aliases of aliases ("billion laughs") expand to more values than memory holds.
MAX_DEPTH = 32
MAX_VALUES = 100_000
# libyaml's composer recurses on the C stack and crashes the process (SIGSEGV) near 40,000 levels.
# Every collection starts with one of these characters, so their count bounds the nesting depth; a
# file with more of them is parsed by the pure-Python loader, which raises RecursionError instead.
_COLLECTION_CHARS = b"[{-?:"
_C_LOADER_MAX_COLLECTIONS = 5000


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


def _unique_keys(constructor: yaml.constructor.SafeConstructor, node: yaml.MappingNode, deep: bool = False) -> Any:
    """YAML says a mapping's keys are unique; PyYAML keeps the last silently (a second `vms: []`
    would empty the host). Checked on the mapping's own keys: `<<` merges may override, by design."""
    first: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = constructor.construct_object(key_node)
        try:
            if key in first:
                raise DuplicateKey(key, first[key], key_node.start_mark)
            first[key] = key_node.start_mark
        except TypeError:  # an unhashable key: the constructor itself refuses it below
            continue
    return yaml.constructor.SafeConstructor.construct_mapping(constructor, node, deep=deep)


class _UniqueLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    construct_mapping = _unique_keys


class _UniquePyLoader(yaml.SafeLoader):
    construct_mapping = _unique_keys


@dataclass(frozen=True)
class LoadedHost:
    name: str
    file: str
    host: Host
    cores: tuple[Core, ...]
    planned: frozenset[str]  # VMs whose pins came from the planner, not the file


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, LoadedHost]
    warnings: tuple[Problem, ...]


def host_names(hosts_dir: Path) -> list[str]:
    return sorted(p.stem for p in hosts_dir.glob("*.yaml") if p.name != DEFAULTS)


def load_inventory(hosts_dir: Path, names: Sequence[str] | None = None) -> Inventory:
    if not hosts_dir.is_dir():
        raise InventoryError([Problem("file.missing", str(hosts_dir), "", "inventory directory not found")])
    known = host_names(hosts_dir)
    wanted = list(names) if names else known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InventoryError([
            Problem("host.unknown", str(hosts_dir), "",
                    f"unknown host {n!r}; {hosts_dir} has {', '.join(known) or 'no host files'}")
            for n in unknown
        ])
    # The file's name is the host's name: in every message, and a directory of .runs (`...yaml`
    # would be the host "..", whose records land outside .runs).
    misnamed = [n for n in wanted if not is_name(n)]
    if misnamed:
        raise InventoryError([
            Problem("file.name", str(hosts_dir / f"{n}.yaml"), "",
                    f"{n!r} is not a host name: name the file <host>.yaml with 1-63 lowercase letters, digits and "
                    "'-' (RFC 1123)") for n in misnamed])
    problems: list[Problem] = []
    defaults_file = hosts_dir / DEFAULTS
    defaults: dict[str, Any] = {}
    if defaults_file.exists():
        defaults = _read_yaml(defaults_file, problems) or {}
    hosts: dict[str, LoadedHost] = {}
    for name in wanted:
        loaded = _load_host(name, hosts_dir / f"{name}.yaml", defaults, str(defaults_file), problems)
        if loaded:
            hosts[name] = loaded
    if any(p.severity == "error" for p in problems):
        raise InventoryError(problems)
    return Inventory(hosts, tuple(problems))


def _load_host(name: str, file: Path, defaults: dict[str, Any], defaults_file: str,
               problems: list[Problem]) -> LoadedHost | None:
    raw = _read_yaml(file, problems)
    if raw is None:
        return None
    try:
        host = Host.model_validate(_merge(defaults, raw))
    except ValidationError as exc:
        for err in exc.errors():
            origin = str(file) if _has_path(raw, err["loc"]) or not _has_path(defaults, err["loc"]) else defaults_file
            problems.append(_schema_problem(err, origin))
        return None
    here = str(file)
    findings = list(check_topology(host))
    if findings:
        problems.extend(Problem(f.rule, here, f.path, f.message, f.severity) for f in findings)
        return None
    topo = host.topology
    # check_topology has reported every layout problem by rule, so this cannot raise here.
    cores = cores_from_threads(inventory_threads(topo), {n.id: n.cpu_set for n in topo.nodes}, shape_name(topo))
    host, planned = _plan(host, cores, here, problems)
    host = _read_key_files(host, here, problems)
    problems.extend(Problem(f.rule, here, f.path, f.message, f.severity) for f in check_host(host, cores))
    return LoadedHost(name, here, host, tuple(cores), planned)


def plan_host(host: Host, cores: Sequence[Core], *, replan: bool = False) -> dict[str, tuple[int, ...]]:
    """Pins per VM: given pins kept, the rest planned; with replan, every VM planned from its counts."""
    return plan_pins(cores, _requests(host, replan), _reserved(host))


def _reserved(host: Host) -> frozenset[int]:
    return host.reserved_cpus.union(*(vm.tuning.emulator_cpus for vm in host.vms))


def _requests(host: Host, replan: bool, skip: frozenset[str] = frozenset()) -> list[PinRequest]:
    # Given pins are claimed as a set: their count and duplicates are rules.py's to report.
    return [
        PinRequest(vm.name, vm.vcpu_count, vm.tuning.numa_memory.nodes) if replan or vm.tuning.vcpu_pins is None
        else PinRequest(vm.name, len(set(vm.pins)), frozenset(), tuple(dict.fromkeys(vm.pins)))
        for vm in host.vms if vm.name not in skip
    ]


def _plan(host: Host, cores: list[Core], file: str, problems: list[Problem]) -> tuple[Host, frozenset[str]]:
    """Fill in pins for VMs that give only vcpu_count and a nodeset."""
    todo = {vm.name for vm in host.vms if vm.tuning.vcpu_pins is None}
    if not todo:
        return host, frozenset()
    nowhere = [i for i, vm in enumerate(host.vms) if vm.name in todo and not vm.tuning.numa_memory.nodes]
    for i in nowhere:
        problems.append(Problem("pins.plan", file, f"vms[{i}].tuning.numa_memory.nodeset",
                                f"{host.vms[i].name} gives no vcpu_pins and an empty nodeset: nowhere to plan "
                                "its pins; give a nodeset or the pins"))
    # Only the VMs that really cannot be placed are refused; the rest are planned and checked.
    try:
        plan, refused = plan_what_fits(cores, _requests(host, False, frozenset(host.vms[i].name for i in nowhere)),
                                       _reserved(host))
    except PlanError as exc:  # duplicate names or clashing given pins: nothing can be planned
        problems.append(Problem("pins.plan", file, "vms", str(exc)))
        return host, frozenset()
    for refusal in refused:
        index = next((i for i, vm in enumerate(host.vms) if vm.name == refusal.vm), None)
        path = f"vms[{index}].vcpu_count" if index is not None else "vms"
        problems.append(Problem("pins.plan", file, path, str(refusal)))
    placed = frozenset(name for name in todo if name in plan)
    vms = tuple(
        vm.model_copy(update={"tuning": vm.tuning.model_copy(update={"vcpu_pins": plan[vm.name]})})
        if vm.name in placed else vm
        for vm in host.vms
    )
    return host.model_copy(update={"vms": vms}), placed


def _read_key_files(host: Host, file: str, problems: list[Problem]) -> Host:
    """Check every inline key and add the keys of ssh_authorized_key_files (a missing file is a warning).

    A key file is read only when it is a small regular file, and its lines are never quoted in a
    message: a file named by mistake (a private key, any other secret) must not reach the output."""
    vms = []
    for i, vm in enumerate(host.vms):
        users = []
        for j, user in enumerate(vm.user_configs):
            base = f"vms[{i}].user_configs[{j}]"
            keys: list[str] = []
            for k, key in enumerate(user.ssh_authorized_keys):
                if _key_ok(key, file, f"{base}.ssh_authorized_keys[{k}]", "this key", problems):
                    keys.append(key)
            for k, name in enumerate(user.ssh_authorized_key_files):
                keys += _key_file(name, vm.name, file, f"{base}.ssh_authorized_key_files[{k}]", problems)
            users.append(user.model_copy(update={"ssh_authorized_keys": tuple(dict.fromkeys(keys))}))
        vms.append(vm.model_copy(update={"user_configs": tuple(users)}))
    return host.model_copy(update={"vms": tuple(vms)})


def _key_ok(key: str, file: str, where: str, what: str, problems: list[Problem]) -> bool:
    verdict = check_key(key)
    if verdict.rule:
        severity: Severity = "warning" if verdict.severity == "warning" else "error"
        problems.append(Problem(verdict.rule, file, where, f"{what} {verdict.why}", severity))
    return not verdict.rule or verdict.severity == "warning"


def _key_file(name: str, vm: str, file: str, where: str, problems: list[Problem]) -> list[str]:
    try:
        path = Path(name).expanduser()  # RuntimeError: "~nobody/..." names no known user
        data = read_small(path, MAX_KEY_FILE_BYTES)
        text = data.decode()
    except OSError as exc:
        problems.append(Problem("key.file", file, where,
                                f"{path}: {exc.strerror or exc}; {vm} gets no key from it", "warning"))
        return []
    except NotSmallFile as exc:
        problems.append(Problem("key.file", file, where, f"{path} is {exc}: name a public key file (.pub)"))
        return []
    except (RuntimeError, ValueError) as exc:  # unknown ~user, a NUL in the name, not UTF-8 text
        why = str(exc).rstrip(".")
        problems.append(Problem("key.file", file, where, f"{name!r}: {why}; {vm} gets no key from it", "warning"))
        return []
    if looks_private(text):  # said once for the file, never its lines
        problems.append(Problem("key.private", file, where,
                                f"{path} holds a PRIVATE key, not a public one: name its public half "
                                f"({path}.pub); the private key was not copied anywhere"))
        return []
    keys = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#") and _key_ok(line, file, where, f"line {n} of {path}", problems):
            keys.append(line)
    return keys


def _read_yaml(file: Path, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        text = read_small(file, MAX_FILE_BYTES)  # bytes: YAML's reader detects the encoding and names a bad byte
    except FileNotFoundError:
        problems.append(Problem("file.missing", str(file), "", "file not found"))
        return None
    except NotSmallFile as exc:
        problems.append(Problem("file.too-big" if exc.too_big else "file.not-regular", str(file), "",
                                f"is {exc}; a hosts file is a small regular YAML file (a symlink to one is followed)"))
        return None
    except OSError as exc:
        problems.append(Problem("file.unreadable", str(file), "", exc.strerror or str(exc)))
        return None
    shallow = sum(text.count(c) for c in _COLLECTION_CHARS) <= _C_LOADER_MAX_COLLECTIONS
    try:
        data = yaml.load(text, Loader=_UniqueLoader if shallow else _UniquePyLoader)  # noqa: S506 - SafeLoaders
    except DuplicateKey as exc:
        problems.append(Problem("yaml.duplicate-key", str(file), f"line {exc.second.line + 1}",
                                f"duplicate key {exc.key!r}: it is also on line {exc.first.line + 1} of the same "
                                "mapping, and YAML keeps only one of them silently; remove or rename one"))
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a ReaderError: not text in a YAML encoding
        where = (f"line {mark.line + 1}, column {mark.column + 1}" if mark
                 else f"byte {position}" if isinstance(position, int) else "")
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(Problem("yaml.syntax", str(file), where, f"could not parse YAML: {what}"))
        return None
    except RecursionError:
        data = _TOO_DEEP
    too_big = _too_big(data)
    if too_big:
        problems.append(Problem("yaml.too-big", str(file), "", too_big))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem("yaml.not-mapping", str(file), "",
                                f"the top level must be a mapping of keys, not a {type(data).__name__}"))
        return None
    return data


_TOO_DEEP = object()
_DEEP = (f"nested deeper than {MAX_DEPTH} levels (or a recursive alias); a hosts file needs only a few")


def _too_big(data: Any) -> str:
    """Why data is too deep or too large to validate, or "" (iterative: no recursion to exhaust)."""
    if data is _TOO_DEEP:
        return _DEEP
    todo: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while todo:
        value, depth = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"more than {MAX_VALUES} values once aliases are expanded; a hosts file needs only a few hundred"
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                return _DEEP
            todo.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return ""


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """nornir-style inheritance: the host file wins, mappings merge key by key, lists replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _has_path(data: Any, loc: tuple[int | str, ...]) -> bool:
    for part in loc:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_mapping or in_list):
            return False
        data = data[part]
    return True


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _plain(str(part)):  # a key with a newline or control character stays on one line
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _plain(key: str) -> bool:
    return bool(key) and key.isprintable() and not any(ch.isspace() for ch in key)


def _schema_problem(err: ErrorDetails, file: str) -> Problem:
    kind, loc = err["type"], err["loc"]
    if kind == "missing":
        return Problem("schema.missing", file, field_path(loc), "required field is missing")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
        return Problem("schema.unknown-key", file, field_path(loc), f"unknown key {key!r}{hint}")
    if "." in kind:  # our own PydanticCustomError rule ids
        return Problem(kind, file, field_path(loc), err["msg"])
    return Problem("schema.type", file, field_path(loc), f"{err['msg']} (got {err['input']!r})")


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a model accepts at a field path, for 'did you mean' hints."""
    model: type[BaseModel] | None = Host
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        model = _model_in(info.annotation) if info else None
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
