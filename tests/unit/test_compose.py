"""The production packaging: docker-compose.yml is valid for a compose tool (which needs no
Docker engine to check it), will not start Flower without a password, and runs only commands
this project has; ops/Dockerfile, .env.example, .dockerignore, ops/prometheus/ and ops/grafana/
agree."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from celery.bin.worker import worker as celery_worker_command
from flower.options import default_options as flower_options

from ledger.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "ops" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
FLOWER_PASSWORD = "flower-pw-for-test"
# The services built from ops/Dockerfile; every other service runs a public image.
SMSQ_IMAGE = re.compile(r"^smsq(:|$)")
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
# The `ha` profile's sentinels, and the name they know the primary by.
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
MASTER_NAME = "smsq"


def _compose_tool() -> list[str] | None:
    """`docker compose` (the v2 plugin) if it runs, else Debian's docker-compose."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


TOOL = _compose_tool()
needs_tool = pytest.mark.skipif(
    TOOL is None,
    reason="no compose tool: neither `docker compose` nor docker-compose is installed "
    "(Debian: apt-get install --no-install-recommends docker-compose; .ci/run does it as root)",
)


def _env_name(field: str) -> str:
    """The variable a setting is read from: its alias when it has one (SMSQ_TRUNKS)."""
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"{ENV_PREFIX}{field.upper()}"


def _env_example_lines() -> list[tuple[bool, str, str]]:
    """(commented out, name, value) for every KEY=value line of .env.example."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            lines.append((match.group(1) is not None, match.group(2), match.group(3)))
    return lines


def _project(directory: Path, env_text: str) -> Path:
    """A compose project: the real compose file with this .env beside it. Never the checkout
    itself, where a .env would also be read by every smsq process started there."""
    directory.mkdir()
    shutil.copy(COMPOSE_FILE, directory / "docker-compose.yml")
    (directory / "ops").symlink_to(ROOT / "ops")
    (directory / ".env").write_text(env_text)
    return directory


def _run_compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert TOOL is not None
    # Only what the tool needs: a FLOWER_PASSWORD or SMSQ_ value in the developer's shell
    # would override .env and hide what the file alone does.
    env = {"PATH": os.environ["PATH"], "HOME": str(project)}
    return subprocess.run(
        [*TOOL, "config", *args], cwd=project, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def _load_yaml(text: str) -> Any:
    """PyYAML if this interpreter has it; else the Python that runs Debian's docker-compose,
    which depends on PyYAML."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    tool = shutil.which("docker-compose")
    first_line = Path(tool).read_bytes().split(b"\n", 1)[0] if tool else b""
    if not first_line.startswith(b"#!") or b"python" not in first_line:
        pytest.skip("no YAML parser: PyYAML is not installed and docker-compose is not Python")
    python = first_line[2:].decode().strip()
    script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    result = subprocess.run(
        [python, "-c", script], input=text, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as the tool resolves it, with .env.example plus a Flower password."""
    if TOOL is None:
        pytest.skip(needs_tool.kwargs["reason"])
    env_text = ENV_EXAMPLE.read_text().replace(
        "\nFLOWER_PASSWORD=\n", f"\nFLOWER_PASSWORD={FLOWER_PASSWORD}\n"
    )
    assert FLOWER_PASSWORD in env_text, ".env.example has no empty FLOWER_PASSWORD= line"
    return _resolved(_project(tmp_path_factory.mktemp("compose") / "smsq", env_text))


def _resolved(project: Path) -> dict[str, Any]:
    """The project's configuration as the compose tool resolves it (anchors merged, .env
    interpolated), as JSON where the tool prints it."""
    as_json = _run_compose(project, "--format", "json")
    if as_json.returncode == 0 and as_json.stdout.startswith("{"):
        return dict(json.loads(as_json.stdout))
    # docker-compose v1 prints YAML only (and its usage, with status 0, for --format).
    result = _run_compose(project)
    assert result.returncode == 0, result.stderr
    return dict(_load_yaml(result.stdout))


def _smsq_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if SMSQ_IMAGE.match(service.get("image", ""))
    }


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _image_packages() -> set[str]:
    """The top-level Python packages ops/Dockerfile puts in the image."""
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\w+)\s+\w+\s*$", DOCKERFILE.read_text(), re.M))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = set(pyproject["tool"]["setuptools"]["packages"])
    return copied & (installed | {"ops"})


def _module_help(module: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"python -m {module} --help failed:\n{result.stderr}"
    return result.stdout


def _long_flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def _check_celery(name: str, argv: list[str]) -> None:
    assert argv[1:3] == ["-A", "worker"], f"{name}: the Celery app is -A worker"
    assert (ROOT / "worker" / "app.py").is_file()
    subcommand, flags = argv[3], _long_flags(argv[4:])
    if subcommand == "worker":
        known = {opt for param in celery_worker_command.params for opt in param.opts}
        assert set(flags) <= known, f"{name}: celery worker has no {set(flags) - known}"
    elif subcommand == "flower":
        assert "flower" in {e.name for e in entry_points(group="celery.commands")}
        unknown = [f for f in flags if f.removeprefix("--") not in flower_options]
        assert not unknown, f"{name}: Flower has no option {unknown}"
    else:
        pytest.fail(f"{name}: `celery {subcommand}` is not a command smsq runs")


def _check_python_module(name: str, argv: list[str]) -> None:
    assert argv[1] == "-m", f"{name}: run modules with python -m"
    module = argv[2]
    path = ROOT / module.replace(".", "/")
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"{name}: no module {module} in the project"
    )
    top = module.split(".")[0]
    assert top in _image_packages(), f"{name}: ops/Dockerfile does not put {top}/ in the image"
    text = _module_help(module)
    for flag in _long_flags(argv[3:]):
        assert flag in text, f"{name}: python -m {module} has no {flag}"


@needs_tool
def test_compose_file_is_valid_and_has_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "redis", "worker", "flower", "callbacks", "api", "webhooks", "simulator", "prometheus",
        "grafana", "redis-replica", *SENTINELS,
    }  # fmt: skip
    assert set(_smsq_services(config)) == {
        "worker", "flower", "callbacks", "api", "webhooks", "simulator",
    }  # fmt: skip
    for name, service in _smsq_services(config).items():
        assert service["build"]["dockerfile"] == "ops/Dockerfile", name


@needs_tool
@pytest.mark.parametrize("password_line", ["FLOWER_PASSWORD=", None])
def test_flower_will_not_start_without_a_password(
    tmp_path: Path, password_line: str | None
) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    assert "FLOWER_PASSWORD=" in lines
    if password_line is None:
        lines.remove("FLOWER_PASSWORD=")
    result = _run_compose(_project(tmp_path / "smsq", "\n".join(lines) + "\n"), "-q")
    assert result.returncode != 0
    assert "FLOWER_PASSWORD" in result.stderr


@needs_tool
def test_every_service_runs_a_command_the_project_has(config: dict[str, Any]) -> None:
    for name, service in _smsq_services(config).items():
        argv = _argv(service)
        if argv[0] == "celery":
            _check_celery(name, argv)
        elif argv[0] == "python":
            _check_python_module(name, argv)
        else:
            pytest.fail(f"{name}: {argv[0]} is not a program the image runs")
    assert _argv(config["services"]["worker"])[:4] == ["celery", "-A", "worker", "worker"]
    assert _argv(config["services"]["flower"])[:4] == ["celery", "-A", "worker", "flower"]


@needs_tool
def test_redis_keeps_every_write_and_never_evicts(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = " ".join(_argv(redis))
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in command
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    volume = redis["volumes"][0]
    source, target = (
        (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
    )
    assert target == "/data" and source in config["volumes"]
    for service in _smsq_services(config).values():
        if "redis" in service.get("depends_on", {}):
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def _volume(service: dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a service's one volume (v2 prints objects, v1 text)."""
    (volume,) = service["volumes"]
    if isinstance(volume, dict):
        return volume["source"], volume["target"]
    source, target = volume.split(":")[:2]
    return source, target


def _run_start_script(
    service: dict[str, Any], data: Path, **env: str
) -> tuple[list[str], dict[str, str]]:
    """Run an `sh -c` command of the `ha` profile on this machine, /data being `data` and
    redis-server a stand-in that records its arguments: (redis-server's arguments, the
    files in `data` by name)."""
    argv = _argv(service)
    assert argv[:2] == ["sh", "-c"], "a start script run by sh -c"
    # The tool prints $$ (compose's escape for a $ of the shell) as it is written.
    script = argv[2].replace("$$", "$").replace("/data/", f"{data}/")
    bin_dir = data.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "redis-server"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    recorder.chmod(0o755)
    args_file = data.parent / "args"
    run_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_FILE": str(args_file), **env}
    subprocess.run(["sh", "-c", script], env=run_env, check=True, timeout=30)
    files = {path.name: path.read_text() for path in data.iterdir()}
    return args_file.read_text().splitlines(), files


def _conf_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@needs_tool
def test_ha_replica_follows_redis_and_keeps_its_role(
    config: dict[str, Any], tmp_path: Path
) -> None:
    redis, replica = config["services"]["redis"], config["services"]["redis-replica"]
    assert replica["image"] == redis["image"]
    assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli ping" in " ".join(replica["healthcheck"]["test"])
    source, target = _volume(replica)
    assert target == "/data" and source in config["volumes"] and source != _volume(redis)[0]
    # After a failover redis rejoins as a replica, named as the clients can reach it.
    assert "--replica-announce-ip redis" in " ".join(_argv(redis))

    data = tmp_path / "data"
    data.mkdir()
    args, files = _run_start_script(replica, data)
    assert _conf_lines(files["redis.conf"]) == ["replicaof redis 6379"]
    assert args[0] == f"{data}/redis.conf", "the role is read from (and rewritten to) a file"
    command = " ".join(args)
    # The same persistence and limits as redis, for when it is the primary.
    redis_command = " ".join(_argv(redis))
    for option in ("--appendonly", "--appendfsync", "--maxmemory", "--maxmemory-policy"):
        value = re.search(rf"{option} (\S+)", redis_command)
        assert value and f"{option} {value[1]}" in command, option
    assert "--replica-announce-ip redis-replica" in command
    assert "--replicaof" not in command, "a command-line replicaof would undo a promotion"

    # Sentinel promoted it and rewrote the file: a restart keeps that.
    (data / "redis.conf").write_text("# rewritten by CONFIG REWRITE\nappendonly yes\n")
    _, files = _run_start_script(replica, data)
    assert "replicaof" not in files["redis.conf"]


@needs_tool
def test_ha_sentinels_watch_redis_as_smsq_with_quorum_2(
    config: dict[str, Any], tmp_path: Path
) -> None:
    redis = config["services"]["redis"]
    volumes = set()
    for name in SENTINELS:
        sentinel = config["services"][name]
        assert sentinel["image"] == redis["image"], name
        assert sentinel["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert "sentinel get-master-addr-by-name smsq" in " ".join(sentinel["healthcheck"]["test"])
        source, target = _volume(sentinel)
        assert target == "/data" and source in config["volumes"], name
        volumes.add(source)

        data = tmp_path / name / "data"
        data.mkdir(parents=True)
        args, files = _run_start_script(sentinel, data, **sentinel["environment"])
        assert args == [f"{data}/sentinel.conf", "--sentinel"], name
        lines = _conf_lines(files["sentinel.conf"])
        assert f"sentinel monitor {MASTER_NAME} redis 6379 2" in lines, name
        assert "port 26379" in lines
        # Hostnames: accepted (before the monitor line that names one) and handed out.
        assert lines.index("sentinel resolve-hostnames yes") < lines.index(
            f"sentinel monitor {MASTER_NAME} redis 6379 2"
        )
        assert "sentinel announce-hostnames yes" in lines
        assert f"sentinel announce-ip {name}" in lines, "each announces its own service name"

        # Sentinel rewrote its file (its id, the failovers it saw): a restart keeps it.
        kept = files["sentinel.conf"] + "sentinel myid " + "a" * 40 + "\n"
        (data / "sentinel.conf").write_text(kept)
        _, files = _run_start_script(sentinel, data, **sentinel["environment"])
        assert files["sentinel.conf"] == kept, name
    assert len(volumes) == len(SENTINELS), "each sentinel has a file of its own"


def test_ha_settings_in_the_docs_name_the_sentinels() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text()
    found = dict(
        re.findall(r"^\s*(SMSQ_REDIS_(?:SENTINELS|MASTER_NAME|MIN_REPLICAS))=(\S+)$", docs, re.M)
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_sentinels=found["SMSQ_REDIS_SENTINELS"],
        redis_master_name=found["SMSQ_REDIS_MASTER_NAME"],
        redis_min_replicas=int(found["SMSQ_REDIS_MIN_REPLICAS"]),
    )
    assert settings.sentinels() == [(name, 26379) for name in SENTINELS]
    assert settings.redis_master_name == MASTER_NAME
    assert settings.redis_min_replicas == 1
    assert "docker compose --profile ha up -d" in docs


@needs_tool
def test_flower_login_comes_from_the_environment(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"admin:{FLOWER_PASSWORD}"
    assert "basic_auth" in flower_options, "Flower reads FLOWER_BASIC_AUTH as --basic-auth"
    assert FLOWER_PASSWORD not in " ".join(_argv(flower)), "ps would show the password"
    assert "${FLOWER_PASSWORD:?" in COMPOSE_FILE.read_text()
    assert "--max_tasks" in _long_flags(_argv(flower))
    for service in config["services"].values():
        if service is not flower:
            assert "FLOWER_BASIC_AUTH" not in service.get("environment", {})


@needs_tool
def test_workers_scale_with_a_name_each(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    # container_name or hostname would give every replica the same name (and Celery node
    # name); a published port would make the second replica fail to bind it.
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert "--hostname" not in _argv(worker) and "-n" not in _argv(worker)
    assert "ports" not in worker
    assert "9808" in [str(port) for port in worker.get("expose", [])]


@needs_tool
def test_webhooks_scale_with_a_name_each(config: dict[str, Any]) -> None:
    webhooks = config["services"]["webhooks"]
    # Each replica's consumer name in the events stream's group is its hostname and pid.
    assert "container_name" not in webhooks and "hostname" not in webhooks
    assert "--consumer" not in _argv(webhooks)
    assert "ports" not in webhooks
    assert "9810" in [str(port) for port in webhooks.get("expose", [])]
    assert "9810/metrics" in " ".join(webhooks["healthcheck"]["test"])


@needs_tool
def test_only_the_simulator_monitoring_and_redis_ha_wait_for_a_profile(
    config: dict[str, Any],
) -> None:
    profiles = {name: s.get("profiles", []) for name, s in config["services"].items()}
    assert profiles.pop("simulator") == ["sim"]
    assert profiles.pop("prometheus") == ["metrics"]
    assert profiles.pop("grafana") == ["metrics"]
    for name in ("redis-replica", *SENTINELS):
        assert profiles.pop(name) == ["ha"], name
    assert all(not p for p in profiles.values()), profiles
    simulator = _argv(config["services"]["simulator"])
    assert "http://callbacks:8080/callbacks?token=" in " ".join(simulator)


def _override_from_docs() -> str:
    """The docker-compose.override.yml that docs/deployment.md gives host A."""
    docs = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.S)
    found = [b for b in blocks if b.lstrip(" ").startswith("# docker-compose.override.yml")]
    assert len(found) == 1, "docs/deployment.md has no docker-compose.override.yml block"
    return "\n".join(line.removeprefix("   ") for line in found[0].splitlines()) + "\n"


@needs_tool
def test_two_host_override_in_the_docs_is_valid(tmp_path: Path) -> None:
    env_text = ENV_EXAMPLE.read_text().replace(
        "\nFLOWER_PASSWORD=\n", f"\nFLOWER_PASSWORD={FLOWER_PASSWORD}\n"
    )
    project = _project(tmp_path / "smsq", env_text)
    (project / "docker-compose.override.yml").write_text(_override_from_docs())
    refused = _run_compose(project, "-q")
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr

    (project / ".env").write_text(env_text + "REDIS_PASSWORD=redis-pw-for-test\n")
    redis = _resolved(project)["services"]["redis"]
    command = " ".join(_argv(redis))
    assert "--requirepass redis-pw-for-test" in command
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert redis["environment"]["REDISCLI_AUTH"] == "redis-pw-for-test"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_dockerfile_is_slim_non_root_and_ships_every_package() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0] != "#"]
    # The base is a build argument (a local stand-in where no registry is reachable, see
    # tests/containers): what counts is its default.
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), args[0])
        for word, *args in instructions
        if word == "FROM"
    ]
    assert froms and all(image.startswith("python:3.11-slim") for image in froms), froms
    users = [args[0].strip() for word, *args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert _image_packages() == {*pyproject["tool"]["setuptools"]["packages"], "ops"}
    assert re.search(r"^COPY .*\bREADME\.md\b", text, re.M), "pyproject's readme is needed"
    # The dependencies come from the lock alone (with hashes); smsq itself adds none.
    lock_install = r"pip install --no-cache-dir --require-hashes -r requirements\.lock$"
    assert re.search(lock_install, text, re.M)
    assert re.search(r"pip install --no-cache-dir --no-deps \.$", text, re.M)
    assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|TOKEN|SECRET)", text, re.M | re.I)


def test_dockerignore_keeps_local_secrets_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv" in ignored and ".git" in ignored


def test_env_example_lists_every_setting_with_valid_values() -> None:
    lines = _env_example_lines()
    names = [name for _, name, _ in lines]
    assert len(names) == len(set(names)), "a variable is listed twice"
    fields = {_env_name(field): field for field in Settings.model_fields}
    listed = {name for name in names if name.startswith(ENV_PREFIX)}
    assert set(fields) - listed == set(), "settings missing from .env.example"
    assert listed - set(fields) == set(), ".env.example lists settings smsq does not have"
    assert {"FLOWER_USER", "FLOWER_PASSWORD"} <= set(names)

    active = {fields[n]: v for commented, n, v in lines if not commented and n in fields}
    Settings(_env_file=None, **active)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for commented, name, value in lines:
        if commented and name in fields:
            # A commented-out line documents the default: it must be the real one.
            field = fields[name]
            documented = Settings(_env_file=None, **{field: value})  # type: ignore[call-arg]
            assert getattr(documented, field) == getattr(defaults, field), name
    secrets = ("FLOWER_PASSWORD", "SMSQ_CALLBACK_TOKEN", "SMSQ_API_TOKEN")
    assert all(value == "" for _, name, value in lines if name in secrets), (
        "a secret placeholder would be deployed as it is; leave secrets empty"
    )


def test_prometheus_scrapes_every_replica_flower_and_the_ingester() -> None:
    scrape = _load_yaml((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())[
        "scrape_configs"
    ]
    jobs = {job["job_name"]: job for job in scrape}
    workers = jobs["smsq-worker"]["dns_sd_configs"]
    assert workers == [{"names": ["worker"], "type": "A", "port": 9808, "refresh_interval": "15s"}]
    webhooks = jobs["smsq-webhooks"]["dns_sd_configs"]
    assert webhooks == [
        {"names": ["webhooks"], "type": "A", "port": 9810, "refresh_interval": "15s"}
    ]
    targets = {
        target for job in scrape for c in job.get("static_configs", []) for target in c["targets"]
    }
    assert targets == {"flower:5555", "callbacks:8080"}


def _ops_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the checkout's file or folder, for each of a service's bind mounts of
    ops/ (the tool prints their sources as absolute paths in the project it ran in)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if "/ops/" in source:
            found[target] = ROOT / "ops" / source.split("/ops/", 1)[1]
    return found


def _host_ips(service: dict[str, Any]) -> set[str]:
    """The host addresses a service's ports are published on (v2 prints objects, v1 text)."""
    return {
        str(port["host_ip"]) if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        for port in service["ports"]
    }


@needs_tool
def test_prometheus_loads_the_scrape_config_and_the_alerts(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    mounts = _ops_mounts(prometheus)
    config_file = mounts["/etc/prometheus/prometheus.yml"]
    assert config_file == ROOT / "ops" / "prometheus" / "prometheus.yml"
    rule_files = _load_yaml(config_file.read_text())["rule_files"]
    assert rule_files == ["alerts.yml"]
    # Relative rule files are read beside the config file.
    assert mounts["/etc/prometheus/alerts.yml"] == config_file.parent / "alerts.yml"
    assert _host_ips(prometheus) == {"127.0.0.1"}


@needs_tool
def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert _host_ips(grafana) == {"127.0.0.1"}
    mounts = _ops_mounts(grafana)
    assert all(path.exists() for path in mounts.values()), mounts
    datasources = mounts["/etc/grafana/provisioning/datasources"]
    (source,) = _load_yaml((datasources / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    dashboards = mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = _load_yaml((dashboards / "smsq.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    files = {target: path for target, path in mounts.items() if target.startswith(folder + "/")}
    assert files == {f"{folder}/smsq-dashboard.json": ROOT / "ops/grafana/smsq-dashboard.json"}
