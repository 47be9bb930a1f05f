"""The repository's docker-compose.yml brought up by Debian's docker-compose against podman's
Docker-compatible API, as a project of its own: its own directory, .env, name and free host
ports, so it collides with nothing else on the host (pytest-xdist included)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ops.stack import free_port
from tests.containers.images import ROOT, BaseImages, podman, podman_env, tail

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SMSQ_SERVICES = ("worker", "flower", "callbacks", "api", "webhooks", "simulator")
# docker-compose.yml's host-port variables, each given a free port here.
PORT_VARIABLES = ("API_PORT", "CALLBACKS_PORT", "FLOWER_PORT", "SIMULATOR_PORT", "PROMETHEUS_PORT")
SECRETS = ("FLOWER_PASSWORD", "SMSQ_CALLBACK_TOKEN", "SMSQ_API_TOKEN")
# How often health checks run while compose waits for them (health_checks_running).
HEALTH_POLL_S = 1.0
SERVICE_START_TIMEOUT_S = 30.0
COMPOSE_TIMEOUT_S = 300.0
LOG_LINES = 25
# Every project of this test is named so; one a killed run left is removed after STALE_S.
PROJECT_PREFIX = "smsqct"
STALE_S = 3600


class PodmanService:
    """`podman system service` on a private socket, for docker-compose to talk to."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "podman.sock"
        self.log = directory / "podman-service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> PodmanService:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.url],
                env=podman_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"podman system service exited:\n{tail(self.log.read_text())}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.socket))
                return self
            time.sleep(0.1)
        raise RuntimeError(f"podman system service did not listen on {self.socket}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None


def env_file(**settings: str) -> tuple[str, dict[str, str]]:
    """.env.example with its secrets generated and these settings set; and the secrets."""
    generated = {name: secrets.token_urlsafe(16) for name in SECRETS}
    values = {**generated, **settings}
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith(f"{name}=")]
        assert found, f".env.example has no {name}= line"
        lines[found[0]] = f"{name}={value}"
    return "\n".join(lines) + "\n", generated


class ComposeStack:
    """One compose project: `compose()` runs docker-compose on it, with the sim profile."""

    def __init__(
        self, directory: Path, project: str, image: str, bases: BaseImages,
        service: PodmanService, timings: dict[str, float], **settings: str,
    ) -> None:  # fmt: skip
        self.directory = directory
        # How long each step took, printed when the test ends.
        self.timings = timings
        self.project = project
        # Compose labels everything it makes for the project with its name.
        self.label = f"label=com.docker.compose.project={project}"
        self.service = service
        self.ports = {name: free_port() for name in PORT_VARIABLES}
        directory.mkdir(parents=True, exist_ok=True)
        # The compose file as it is now, beside its own .env: never the checkout's .env.
        (directory / "docker-compose.yml").write_text(COMPOSE_FILE.read_text())
        (directory / "ops").symlink_to(ROOT / "ops")
        images = {"redis": {"image": bases.redis}} | {s: {"image": image} for s in SMSQ_SERVICES}
        (directory / "images.yml").write_text(json.dumps({"services": images}, indent=2))
        text, self.secrets = env_file(**settings)
        (directory / ".env").write_text(text)

    def compose(
        self, *args: str, timeout_s: float = COMPOSE_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.directory),
            "DOCKER_HOST": self.service.url,
            **{name: str(port) for name, port in self.ports.items()},
        }
        argv = [
            "docker-compose", "-p", self.project, "-f", "docker-compose.yml", "-f", "images.yml",
            "--profile", "sim", *args,
        ]  # fmt: skip
        result = subprocess.run(
            argv, cwd=self.directory, env=env, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} exited {result.returncode}:\n"
                f"{tail(result.stdout + result.stderr)}\n{self.diagnostics()}"
            )
        return result

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.ports[variable]}"

    def container(self, service: str, number: int = 1) -> str:
        return f"{self.project}_{service}_{number}"

    def containers(self, *, all_states: bool = True) -> list[str]:
        listed = podman(
            "ps", *(["-a"] if all_states else []), "--format", "{{.Names}}",
            "--filter", self.label,
        )  # fmt: skip
        return sorted(listed.stdout.split())

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return result.stdout + result.stderr

    def restarted(self) -> dict[str, int]:
        """Containers their restart policy has restarted (a command that exits), by count."""
        names = self.containers()
        if not names:
            return {}
        listed = podman("inspect", "--format", "{{.Name}} {{.RestartCount}}", *names, check=False)
        counts = (line.rsplit(" ", 1) for line in listed.stdout.splitlines() if " " in line)
        return {name: int(n) for name, n in counts if n.isdigit() and int(n) > 0}

    def hostname(self, name: str) -> str:
        return podman("inspect", "--format", "{{.Config.Hostname}}", name).stdout.strip()

    def healthy(self, name: str) -> bool:
        return podman("healthcheck", "run", name, check=False, timeout_s=60).returncode == 0

    @contextlib.contextmanager
    def health_checks_running(self) -> Iterator[None]:
        """podman runs health checks from systemd timers; where there is no systemd nobody
        runs them, and compose would wait forever for Redis to be healthy. Run them as the
        timers would, meanwhile."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(HEALTH_POLL_S):
                with contextlib.suppress(Exception):
                    listed = podman(
                        "ps", "--format", "{{.Names}} {{.Status}}", "--filter", self.label
                    )
                    for line in listed.stdout.splitlines():
                        name, _, status = line.partition(" ")
                        if "(starting)" in status or "(unhealthy)" in status:
                            self.healthy(name)

        thread = threading.Thread(target=loop, name=f"{self.project}-health", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=90)

    def wait_healthy(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy(name):
            if restarted := self.restarted():
                raise AssertionError(
                    f"waiting for {name} to be healthy: restarted {restarted}\n{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name}: its health check still fails after {timeout_s:.0f} s\n"
                    f"{self.health_report(name)}\n{self.diagnostics()}"
                )
            time.sleep(HEALTH_POLL_S)

    def health_report(self, name: str) -> str:
        """The health check podman runs for this container, and what its last run printed."""
        found = json.loads(podman("inspect", "--format", "json", name).stdout)[0]
        test = (found.get("Config", {}).get("Healthcheck") or {}).get("Test")
        state = found.get("State", {})
        log = (state.get("Health") or state.get("Healthcheck") or {}).get("Log") or [{}]
        return f"health check {test} last printed: {log[-1].get('Output', '')!r}"

    def diagnostics(self) -> str:
        """Each container's state and the tail of its log, for a failure's message."""
        listed = podman("ps", "-a", "--format", "{{.Names}}  {{.Status}}", "--filter", self.label)
        parts = [listed.stdout]
        for name in self.containers():
            parts.append(f"--- {name}\n{tail(self.logs(name), LOG_LINES)}")
        return "\n".join(parts)

    def leftovers(self) -> dict[str, list[str]]:
        """Whatever of this project podman still has: containers, networks, volumes."""
        found = {"containers": self.containers()}
        for kind in ("network", "volume"):
            listed = podman(kind, "ls", "--format", "{{.Name}}", "--filter", self.label)
            found[f"{kind}s"] = listed.stdout.split()
        # Named after the project too, in case a version of compose labels them differently.
        for kind in ("network", "volume"):
            names = podman(kind, "ls", "--format", "{{.Name}}").stdout.split()
            found[f"{kind}s"] += [n for n in names if n.startswith(f"{self.project}_")]
        return {kind: sorted(set(names)) for kind, names in found.items() if names}

    def remove_everything(self) -> None:
        """After a failure: whatever compose down left behind, removed by force."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        left = self.leftovers()
        for name in left.get("containers", []):
            podman("rm", "--force", "--time", "5", name, check=False)
        for name in left.get("networks", []):
            podman("network", "rm", "--force", name, check=False)
        for name in left.get("volumes", []):
            podman("volume", "rm", "--force", name, check=False)


def remove_stale_projects() -> None:
    """Containers, networks and volumes of projects that killed runs left, once STALE_S old."""
    listed = podman("ps", "-a", "--format", "json", "--filter", "label=com.docker.compose.project")
    now = time.time()
    stale: set[str] = set()
    for found in json.loads(listed.stdout or "[]"):
        project = (found.get("Labels") or {}).get("com.docker.compose.project", "")
        if project.startswith(PROJECT_PREFIX) and now - float(found.get("Created", now)) > STALE_S:
            stale.add(project)
            for name in found.get("Names") or []:
                podman("rm", "--force", "--time", "5", name, check=False)
    for kind in ("network", "volume"):
        names = podman(kind, "ls", "--format", "{{.Name}}").stdout.split()
        for name in names:
            if name.split("_", 1)[0] in stale:
                podman(kind, "rm", "--force", name, check=False)
