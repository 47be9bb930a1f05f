"""The shape of the code (docs/architecture.md §1): no import cycles, components that import
the shared packages and never each other, a narrow ledger, workers without phonenumbers, and
modules that build no app and read no settings when imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "dispatch", "web", "worker", "producer", "callbacks", "webhooks", "ops")
# Components: each may import the shared packages, never another component.
COMPONENTS = ("worker", "producer", "callbacks", "webhooks")
SHARED = ("ledger", "dispatch", "web")
# What the ledger must not need: a web server, a Celery publisher, a phone-number library.
NOT_IN_LEDGER = ("uvicorn", "starlette", "kombu", "celery", "phonenumbers", "httpx")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, anywhere in it (at the top, in a function, or only for
    type checking): the modules of this project it names, resolved to the longest known."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                base = ".".join(parent[: len(parent) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports the module; `from module import name`, the
            # module (a package's own __init__ runs for any of its modules, so is not counted).
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _external(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_walk_sees_the_imports() -> None:
    assert "ledger.store" in GRAPH["worker.engine"]
    assert "ledger.core" in GRAPH["ledger.hotpath"]
    assert len(MODULES) > 60


def test_no_import_cycle() -> None:
    """No module imports itself through others (two modules importing each other included),
    counting imports inside functions and under TYPE_CHECKING too."""
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_component_imports_the_shared_packages_never_another_component(component: str) -> None:
    crossing = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.split(".")[0] == component
        for target in targets
        if target.split(".")[0] in PACKAGES and target.split(".")[0] not in (component, *SHARED)
    )
    assert crossing == []


def test_the_shared_packages_import_no_component() -> None:
    crossing = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.split(".")[0] in SHARED
        for target in targets
        if target.split(".")[0] in COMPONENTS
    )
    assert crossing == []


def test_the_ledger_is_narrow() -> None:
    wide = sorted(
        f"{name} imports {lib}"
        for name in MODULES
        if name.split(".")[0] == "ledger"
        for lib in _external(name) & set(NOT_IN_LEDGER)
    )
    assert wide == []
    # Nor does it reach the packages that publish tasks or serve HTTP.
    assert not any(t.split(".")[0] in ("dispatch", "web") for n, ts in GRAPH.items()
                   if n.split(".")[0] == "ledger" for t in ts)  # fmt: skip


def _fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_a_worker_process_loads_no_phone_number_library() -> None:
    code = (
        "import sys, worker, worker.tasks, worker.engine, worker.supervisor, worker.runtime\n"
        "from worker.app import create_app\n"
        "from ledger.settings import load_settings\n"
        "create_app(load_settings(didww_username='u', didww_password='p'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'phonenumbers'))\n"
    )
    done = _fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The check can fail: the producer does load it.
    done = _fresh_python("import sys, producer.plan; print('phonenumbers' in sys.modules)")
    assert done.stdout.strip() == "True", done.stderr


def test_importing_any_module_builds_no_app_and_reads_no_settings() -> None:
    """Every module is imported in a fresh interpreter whose settings could not even be read
    (a malformed SMSQ_RATE_LIMIT); loading settings and creating a Celery app are counted."""
    names = sorted(n for n in MODULES if not n.endswith("__main__") and n != "ops.bench.cli")
    code = f"""
import os, sys, importlib
os.environ["SMSQ_RATE_LIMIT"] = "not a number"
import celery, ledger.settings
made = []
celery.Celery.__init__ = lambda self, *a, **k: made.append(("Celery", a))
real_init = ledger.settings.Settings.__init__
def counted(self, *a, **k):
    made.append(("Settings", a))
    real_init(self, *a, **k)
ledger.settings.Settings.__init__ = counted
for name in {names!r}:
    importlib.import_module(name)
print(made)
print("PROMETHEUS_MULTIPROC_DIR" in os.environ)
"""
    done = _fresh_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "False"]


def test_the_celery_app_is_built_when_celery_asks_for_it() -> None:
    code = (
        "import worker, celery.app.utils as u\n"
        "app = u.find_app('worker')\n"
        "app.loader.import_default_modules()\n"
        "print(type(app).__name__, app.main, 'smsq.send_batch' in app.tasks)\n"
    )
    env = "import os; os.environ.update(SMSQ_DIDWW_USERNAME='u', SMSQ_DIDWW_PASSWORD='p')\n"
    done = _fresh_python(env + code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Celery", "smsq", "True"]
