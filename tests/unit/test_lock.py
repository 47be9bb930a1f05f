"""Dependencies cannot change under you: every runtime dependency has an upper bound, and the
locks (make lock) pin what pyproject.toml asks for, with hashes, made from its current lists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ops.lock import LOCKS, digest, recorded

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.M)


def pins(name: str) -> dict[str, Version]:
    text = (ROOT / name).read_text()
    return {canonicalize_name(n): Version(v) for n, v in PIN.findall(text)}


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    unbounded = [
        spec
        for spec in PROJECT["dependencies"]
        if not any(s.operator in ("<", "<=", "==", "~=") for s in Requirement(spec).specifier)
    ]
    assert unbounded == []


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_each_lock_was_made_from_the_current_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    assert recorded(ROOT / lock) == digest(extras), (
        f"pyproject.toml's dependencies changed since {lock} was made: run `make lock`"
    )


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_each_lock_pins_every_dependency_within_its_bounds_with_hashes(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    wanted = [
        *PROJECT["dependencies"],
        *(d for e in extras for d in PROJECT["optional-dependencies"][e]),
    ]
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} does not pin {req.name}"
        assert pinned[name] in req.specifier, f"{lock} pins {req.name} {pinned[name]}: {spec}"
    text = (ROOT / lock).read_text()
    # Every pin carries at least one hash (pip installs with --require-hashes).
    blocks = re.split(r"\n(?=[A-Za-z0-9._-]+==)", text)
    unhashed = [b.split("==")[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert unhashed == []


def test_the_image_and_the_set_up_install_from_the_locks() -> None:
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    bootstrap = (ROOT / "ops" / "bootstrap.sh").read_text()
    assert "--require-hashes" in bootstrap and "-r requirements-dev.lock" in bootstrap
