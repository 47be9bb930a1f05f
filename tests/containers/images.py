"""The images the container test runs: Debian, Python and Redis base images made on this host
(no image registry needs to be reachable) and kept in podman's store between runs, and smsq's
image built from the repository as it is at test time."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "ops" / "Dockerfile"
CONTAINERS_DIR = ROOT / "ops" / "containers"
CONTAINERS_CONF = CONTAINERS_DIR / "containers.conf"
REPOSITORY = "localhost/smsq-test"
# On every image of smsq this test builds, so its leftovers are pruned and nobody else's are.
LABEL = "io.smsq.test=containers"
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Part of the Debian image's cache key: change it when make_debian() changes what it makes.
DEBIAN_RECIPE = "debootstrap --variant=minbase, apt lists and archives removed"
# Base images are made once per host and kept; one run at a time builds or prunes, so a prune
# never removes the layers of another run's build in progress.
LOCK_FILE = Path.home() / ".cache" / "smsq" / "containers.lock"
# A run's image that a killed run left behind is removed once it is this old.
STALE_IMAGE_S = 3600
# The CA certificates Debian's ca-certificates package ships; the host's bundle holds these
# plus any the administrator added (a TLS-inspecting proxy's).
SHIPPED_CERTS = Path("/usr/share/ca-certificates/mozilla")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
DEBOOTSTRAP_TIMEOUT_S = 600
BUILD_TIMEOUT_S = 900


class ImageError(RuntimeError):
    """A podman or debootstrap command failed; the message ends with its output's tail."""


class DebianImageError(ImageError):
    """The Debian base image could not be made: the host, not the repository, is at fault
    (no mirror reachable, debootstrap or podman import refused)."""


@dataclass(frozen=True)
class BaseImages:
    debian: str
    python: str
    redis: str


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: list[str], timeout_s: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=podman_env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        output = tail(result.stdout + result.stderr)
        raise ImageError(f"`{' '.join(argv[:3])} ...` exited {result.returncode}:\n{output}")
    return result


def podman(
    *args: str | Path, timeout_s: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(["podman", *map(str, args)], timeout_s, check)


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _apt_sources() -> Iterator[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of each deb source apt reads, one-line or deb822 style."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]], words[3:]
        elif path.suffix == ".sources":
            for paragraph in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {}
                for line in paragraph.splitlines():
                    if line and not line.startswith(("#", " ", "\t")):
                        name, _, value = line.partition(":")
                        fields[name.strip().lower()] = value.split()
                if "deb" in fields.get("types", []):
                    for uri in fields.get("uris", []):
                        yield uri, fields.get("suites", []), fields.get("components", [])


def debian_mirror() -> str:
    """The Debian archive apt uses on this host: the first source of SUITE's main component."""
    for uri, suites, components in _apt_sources():
        if SUITE in suites and "main" in components:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def extra_ca_certificates() -> str:
    """The PEM of every CA certificate this host trusts beyond Debian's ca-certificates
    package (a TLS-inspecting proxy's), for ops/Dockerfile's EXTRA_CA_CERTS: pip inside the
    build must trust what the host does. Empty when there is none, or no Debian list to
    compare with."""
    bundle = Path(os.environ.get("SSL_CERT_FILE") or SYSTEM_BUNDLE)
    if not bundle.is_file() or not SHIPPED_CERTS.is_dir():
        return ""

    def canonical(pem: str) -> str:
        return "".join(pem.split())

    shipped = {
        canonical(pem)
        for path in SHIPPED_CERTS.glob("*.crt")
        for pem in PEM.findall(path.read_text())
    }
    return "\n".join(
        pem for pem in PEM.findall(bundle.read_text()) if canonical(pem) not in shipped
    )


def _drop_other_tags(repository: str, keep: str) -> None:
    """Old versions of a base image (their recipe changed): removed unless something uses them."""
    listed = podman(
        "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repository}"
    )
    for ref in listed.stdout.split():
        if ref != keep:
            podman("rmi", ref, check=False)


def make_debian(timings: dict[str, float]) -> str:
    """Debian SUITE from the mirror apt uses, imported as an image (debootstrap, as root)."""
    mirror = debian_mirror()
    repository = f"{REPOSITORY}/debian"
    ref = f"{repository}:{_key(SUITE, mirror, DEBIAN_RECIPE)}"
    if exists(ref):
        return ref
    try:
        _debootstrap_and_import(ref, mirror, timings)
    except (ImageError, OSError, subprocess.SubprocessError) as exc:
        raise DebianImageError(str(exc)) from exc
    _drop_other_tags(repository, ref)
    return ref


def _debootstrap_and_import(ref: str, mirror: str, timings: dict[str, float]) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(
        prefix="debootstrap-", dir=LOCK_FILE.parent, ignore_cleanup_errors=True
    ) as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror], DEBOOTSTRAP_TIMEOUT_S)
        timings["debootstrap"] = time.monotonic() - started
        # The images built on it run apt-get update themselves: stale lists would only fail.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        for path in (rootfs / "var/cache/apt").glob("*.bin"):
            path.unlink()
        started = time.monotonic()
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["podman", "import", "-", ref], stdin=tar.stdout, env=podman_env(),
                capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT_S, check=False,
            )  # fmt: skip
        if tar.returncode != 0 or imported.returncode != 0:
            raise ImageError(f"podman import of the Debian rootfs failed:\n{tail(imported.stderr)}")
        timings["import"] = time.monotonic() - started


def _start_build(containerfile: Path, ref: str, debian: str) -> subprocess.Popen[str]:
    argv = ["podman", "build", "--layers", "--build-arg", f"DEBIAN_IMAGE={debian}"]
    argv += ["-f", str(containerfile), "-t", ref, str(CONTAINERS_DIR)]
    return subprocess.Popen(
        argv, env=podman_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def make_bases(timings: dict[str, float]) -> BaseImages:
    """The Debian, Python and Redis base images, made (under the store lock) where missing.
    Each is keyed by what makes it, so editing a Containerfile remakes that image only."""
    with store_lock():
        debian = make_debian(timings)
        recipes = {
            "python": [CONTAINERS_DIR / "python.Containerfile"],
            "redis": [CONTAINERS_DIR / "redis.Containerfile", CONTAINERS_DIR / "redis-server"],
        }
        refs = {
            name: f"{REPOSITORY}/{name}:{_key(debian, *(p.read_text() for p in files))}"
            for name, files in recipes.items()
        }
        missing = [name for name, ref in refs.items() if not exists(ref)]
        if missing:
            started = time.monotonic()
            # Both at once: each is mostly apt-get waiting on the network.
            builds = {name: _start_build(recipes[name][0], refs[name], debian) for name in missing}
            try:
                for name, build in builds.items():
                    output, _ = build.communicate(timeout=BUILD_TIMEOUT_S)
                    if build.returncode != 0:
                        raise ImageError(f"building the {name} base image failed:\n{tail(output)}")
                    _drop_other_tags(f"{REPOSITORY}/{name}", refs[name])
            finally:
                for build in builds.values():
                    if build.poll() is None:
                        build.kill()
                    build.communicate()
            timings["base images"] = time.monotonic() - started
        return BaseImages(debian=debian, python=refs["python"], redis=refs["redis"])


def _first_stage() -> str | None:
    match = re.search(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.M | re.I)
    return match.group(1) if match else None


def build_smsq(tag: str, bases: BaseImages) -> None:
    """smsq's image from the repository as it is now, on the Python stand-in."""
    args: list[str | Path] = [
        "build", "--layers", "--label", LABEL, "--build-arg", f"PYTHON_IMAGE={bases.python}",
    ]  # fmt: skip
    if extra := extra_ca_certificates():
        args += ["--build-arg", f"EXTRA_CA_CERTS={extra}"]
    with store_lock():
        podman(*args, "-f", DOCKERFILE, "-t", tag, ROOT, timeout_s=BUILD_TIMEOUT_S)
        # The build stage tagged too, so its layers (the dependencies' above all) outlive this
        # run's image as the next build's cache; the tag moves to each newer build.
        if stage := _first_stage():
            cache = f"{REPOSITORY}/smsq-{stage.lower()}:cache"
            podman(
                *args,
                "--target",
                stage,
                "-f",
                DOCKERFILE,
                "-t",
                cache,
                ROOT,
                timeout_s=BUILD_TIMEOUT_S,
            )


def remove_smsq(tag: str) -> None:
    """This run's image, any a killed run left, and the layers only they used."""
    with store_lock():
        podman("rmi", tag, check=False)
        listed = podman("images", "--format", "json", "--filter", f"label={LABEL}")
        now = time.time()
        for image in json.loads(listed.stdout or "[]"):
            if now - float(image.get("Created", now)) > STALE_IMAGE_S:
                for name in image.get("Names") or []:
                    if name.startswith(f"{REPOSITORY}/smsq:"):
                        podman("rmi", name, check=False)
        podman("image", "prune", "--force", "--filter", f"label={LABEL}", check=False)


def run_probe() -> str | None:
    """Why podman cannot run a container here (the last line it printed), or None. Runs the
    host's /bin/true in a root of its own, so no image needs to exist yet."""
    with tempfile.TemporaryDirectory(prefix="smsq-probe-") as scratch:
        rootfs = Path(scratch)
        libraries = run(["ldd", "/bin/true"]).stdout
        for path in ["/bin/true", *re.findall(r"(/\S+) \(0x", libraries)]:
            target = rootfs / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        probe = podman("run", "--rm", "--rootfs", rootfs, "/bin/true", check=False, timeout_s=60)
    if probe.returncode == 0:
        return None
    return tail(probe.stderr, 1) or f"exit status {probe.returncode}"


def missing_tools() -> list[str]:
    return [
        tool
        for tool in ("podman", "runc", "docker-compose", "debootstrap")
        if not shutil.which(tool)
    ]
