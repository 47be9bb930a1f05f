"""`make lock`: pin every dependency, with its hashes, in requirements.lock (what the image
installs) and requirements-dev.lock (what `make test` and CI install), from pyproject.toml.

Each lock starts with the SHA-256 of the dependency lists it was made from;
tests/unit/test_lock.py fails when pyproject.toml's lists change and the locks were not made
again. pip-compile runs with pip's configuration files and its index variables ignored, so
the hashes are PyPI's, whatever local indexes this machine's pip is told about.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"requirements.lock": (), "requirements-dev.lock": ("dev",)}
# Packages pinned whatever Python makes the lock (see the file).
COMPAT = "ops/lock-compat.in"
DIGEST_LINE = "# pyproject dependencies sha256: "
# pip's variables that point it at other sources than PyPI (this machine sets some).
LOCAL_SOURCES = {
    "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT",
}  # fmt: skip


def digest(extras: tuple[str, ...]) -> str:
    """The SHA-256 of pyproject.toml's dependencies and these extras', as written."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lists = [project["dependencies"], *(project["optional-dependencies"][e] for e in extras)]
    text = "\n".join(sorted(item for found in lists for item in found))
    return hashlib.sha256(text.encode()).hexdigest()


def recorded(lock: Path) -> str | None:
    """The digest a lock file says it was made from."""
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line.removeprefix(DIGEST_LINE).strip()
    return None


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_SOURCES}
    env.update(PIP_CONFIG_FILE=os.devnull, CUSTOM_COMPILE_COMMAND="make lock")
    for name, extras in LOCKS.items():
        argv = [
            sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
            "--allow-unsafe", "--strip-extras", "--index-url", "https://pypi.org/simple",
            "--no-emit-index-url", "--no-emit-find-links",
            "--output-file", name, *(f"--extra={e}" for e in extras), "pyproject.toml", COMPAT,
        ]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, env=env, check=False)
        if done.returncode != 0:
            print(f"smsq: pip-compile failed for {name}", file=sys.stderr)
            return 1
        path = ROOT / name
        path.write_text(f"{DIGEST_LINE}{digest(extras)}\n" + path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
