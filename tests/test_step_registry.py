"""The lazy step registry: every name points at a Step class carrying that name, and looking one
name up imports only that step's module (the start-up saving it exists for)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lib.steps.base import Step
from lib.steps.registry import REGISTRY, WHERE

REPO = Path(__file__).resolve().parent.parent


def test_every_name_is_its_class_name() -> None:
    for name in WHERE:
        step = REGISTRY[name]
        assert issubclass(step, Step)
        assert step.name == name, f"lib/steps/registry.py: {name!r} points at {step.__name__} named {step.name!r}"


def test_every_step_module_class_is_registered() -> None:
    registered = {(module, attr) for module, attr in WHERE.values()}
    for path in sorted((REPO / "lib" / "steps").glob("*.py")):
        module = f"lib.steps.{path.stem}"
        if path.stem in ("__init__", "base", "registry", "status"):  # status.*: the status task's reads
            continue
        loaded = __import__(module, fromlist=["*"])
        for attr, value in vars(loaded).items():
            public = isinstance(value, type) and issubclass(value, Step) and value.__module__ == module
            if public and not attr.startswith("_") and "name" in vars(value) and "(back)" not in value.name:
                assert (module, attr) in registered, f"{module}.{attr} ({value.name}) is missing from the registry"


def test_a_lookup_imports_only_its_own_module() -> None:
    code = ("import json, sys; from lib.steps.registry import REGISTRY; REGISTRY['host.tune']; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lib.steps.'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert "lib.steps.tuning" in loaded
    assert not {"lib.steps.k3s", "lib.steps.observe", "lib.steps.virt", "lib.steps.restart"} & set(loaded)


def test_an_unknown_name_is_a_key_error() -> None:
    assert "host.tun" not in REGISTRY
    assert sorted(REGISTRY) == sorted(WHERE)
