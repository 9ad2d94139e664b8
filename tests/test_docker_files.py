"""docker/: compose files and Dockerfile checked against the installed Flower (no Docker engine needed).

Every flag given to a Flower program must appear in that program's `--help`, none of the flags that
1.42 removed or deprecated may appear, ports are 8000 (SuperLink) and 9094 (SuperNode Runtime API),
images are pinned to the installed Flower version, and the hospital's data and kit are read-only.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import click
import flwr
import pytest
import typer
import yaml
from flwr.common.config import parse_config_args

import fedward
from fedward.cli import app as fedward_app
from fedward.server.deployment.provision import NODE_CONFIG_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = sorted(DOCKER.glob("*.yml"))
BIN = Path(sys.executable).parent
FLOWER_VERSION = flwr.__version__
APP_IMAGE = "fedward:"
PROXY_IMAGE = "fedward-proxy:"
REMOVED = {
    "--clientappio-api-address", "--serverappio-api-address", "--appio-api-address", "--fleet-api-address",
    "--fleet-api-type", "--control-api-address", "--exec-api-address", "--plugin-type", "--grpc-rere",
    "--grpc-adapter", "--rest", "--auth-list-public-keys", "--auth-supernode-public-key", "--storage-dir",
}  # fmt: skip
"""Flags removed from, or deprecated in, Flower 1.42 (older docs and compose files still show them)."""
OLD_PORTS = ("9091", "9092", "9093", "9095")


@cache
def _help(program: str) -> str:
    done = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def _documented(program: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", _help(program)))


def _services() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in COMPOSE:
        document = yaml.safe_load(path.read_text())
        for name, service in document["services"].items():
            found.append((path.name, name, service))
    return found


def _program(service: dict[str, Any]) -> str:
    """Which program a service runs: from its entrypoint, else from its image's default."""
    entrypoint = service.get("entrypoint")
    if entrypoint:
        return entrypoint[0]
    image = str(service["image"])
    if image.startswith("flwr/superlink:"):
        return "flower-superlink"
    if image.startswith("flwr/supernode:"):
        return "flower-supernode"
    if image.startswith(PROXY_IMAGE):
        return "nginx"
    assert image.startswith(APP_IMAGE), image
    return "flower-superexec"  # the app image keeps flwr/superexec's entrypoint


def _flower_services(program: str) -> list[tuple[str, str, list[str]]]:
    return [(f, n, [str(a) for a in s["command"]]) for f, n, s in _services() if _program(s) == program]


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_files_exist_and_parse() -> None:
    assert {p.name for p in COMPOSE} == {"coordinator.yml", "hospital.yml", "demo.yml"}
    programs = {_program(s) for _, _, s in _services()}
    assert {"flower-superlink", "flower-supernode", "flower-superexec", "fedward"} <= programs


@pytest.mark.parametrize("program", ["flower-superlink", "flower-supernode", "flower-superexec"])
def test_every_flower_flag_exists_in_the_installed_help(program: str) -> None:
    documented = _documented(program)
    services = _flower_services(program)
    assert services
    for file, name, args in services:
        flags = _flags(args)
        assert not set(flags) & REMOVED, (file, name, set(flags) & REMOVED)
        unknown = [f for f in flags if f not in documented]
        assert not unknown, f"{file}:{name}: {unknown} not in `{program} --help`"
        # nothing is downloaded at run time: images carry every dependency (air-gapped sites)
        assert "--allow-runtime-dependency-installation" not in flags, (file, name)


def test_superlinks_use_tls_auth_state_and_port_8000() -> None:
    for file, name, args in _flower_services("flower-superlink"):
        assert "--insecure" not in args, (file, name)
        for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--database"):
            assert flag in args, (file, name, flag)
        assert "--enable-supernode-auth" in args and "--disable-runtime-dependency-installation" in args
        assert _value(args, "--isolation") == "process"  # the ServerApp runs in the SuperExec container
        assert (_value(args, "--host"), _value(args, "--port")) == ("0.0.0.0", "8000")


def test_supernodes_use_the_kit_and_port_9094() -> None:
    for file, name, args in _flower_services("flower-supernode"):
        assert "--insecure" not in args, (file, name)
        assert "--root-certificates" in args and "--auth-supernode-private-key" in args
        assert _value(args, "--superlink").endswith(("8000", "SUPERLINK_ADDRESS}"))
        assert (_value(args, "--isolation"), _value(args, "--port")) == ("process", "9094")
        config = parse_config_args([_value(args, "--node-config")])
        assert set(config) == set(NODE_CONFIG_KEYS), (file, name, config)


def test_superexecs_reach_the_superlink_over_tls_or_their_supernode_on_9094() -> None:
    for file, name, args in _flower_services("flower-superexec"):
        address = _value(args, "--runtime-api-address")
        if address.startswith("superlink:"):
            assert address == "superlink:8000" and "--root-certificates" in args, (file, name)
        else:
            assert re.fullmatch(r"supernode(-\w+)?:9094", address), (file, name, address)


def test_published_ports_and_no_old_ports() -> None:
    published = set()
    for file, name, service in _services():
        for mapping in service.get("ports", []):
            assert str(mapping).endswith(":8000") and _program(service) == "nginx", (file, name)
            published.add(file)
    assert published == {"coordinator.yml", "demo.yml"}  # only the proxy: never the SuperLink itself
    for path in [*COMPOSE, DOCKER / "Dockerfile"]:
        for port in OLD_PORTS:
            assert not re.search(rf"\b{port}\b", path.read_text()), (path.name, port)


def test_images_are_pinned_to_the_installed_flower() -> None:
    for file, name, service in _services():
        image = str(service["image"])
        if image.startswith("flwr/"):
            assert image.split(":")[1] == FLOWER_VERSION, (file, name, image)


def test_hospital_mounts_kit_data_and_policy_read_only_and_isolates_the_clientapp() -> None:
    hospital = yaml.safe_load((DOCKER / "hospital.yml").read_text())
    for service in hospital["services"].values():
        for volume in service.get("volumes", []):
            target = volume.split(":")[1]
            if target in ("/kit", "/data", "/policy/policy.toml"):
                assert volume.endswith(":ro"), volume
    assert "ports" not in str(hospital)
    assert hospital["services"]["superexec-clientapp"]["networks"] == ["runtime"]
    assert hospital["networks"]["runtime"]["internal"] is True
    assert hospital["services"]["supernode"]["depends_on"]["check"]["condition"] == (
        "service_completed_successfully"
    )


def _fedward_command(path: list[str]) -> click.Command:
    command: click.Command = typer.main.get_command(fedward_app)
    for part in path:
        assert isinstance(command, click.Group), path
        command = command.commands[part]
    return command


def _fedward_invocations() -> list[tuple[str, list[str]]]:
    calls = []
    for file, name, service in _services():
        entrypoint, command = service.get("entrypoint") or [], [str(c) for c in service.get("command", [])]
        if entrypoint == ["fedward"]:
            calls.append((f"{file}:{name}", command))
        elif entrypoint[:2] == ["sh", "-c"]:
            words = shlex.split(" ".join(command))
            starts = [i for i, w in enumerate(words) if w == "fedward"]
            for i in starts:
                end = next((j for j in range(i + 1, len(words)) if words[j] in ("&&", "||", ";")), len(words))
                calls.append((f"{file}:{name}", words[i + 1 : end]))
    return calls


def test_fedward_commands_in_compose_exist_with_their_options() -> None:
    calls = _fedward_invocations()
    assert len(calls) >= 4
    for where, args in calls:
        words = [a for a in args if not a.startswith("-")]
        group = _fedward_command(words[:1])
        path = words[:2] if isinstance(group, click.Group) else words[:1]
        command = _fedward_command(path)
        options = {o for p in command.params for o in p.opts}
        unknown = [f for f in _flags(args) if f not in options]
        assert not unknown, f"{where}: fedward {' '.join(path)} has no {unknown}"


def test_dockerfile_builds_on_the_pinned_superexec_as_uid_49999() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    instructions = [i for i in instructions if i[0].isupper()]
    assert ["FROM", f"flwr/superexec:{FLOWER_VERSION}"] in instructions
    assert ["USER", "app"] in instructions
    assert 'test "$(id -u)" = "49999"' in text
    assert instructions[-1] == ["ENTRYPOINT", '["flower-superexec"]']
    # the sed that drops the simulation extra must match pyproject.toml's dependency
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("flwr[simulation,dp]") for d in dependencies)
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignored and "**/*.key" in ignored
    # the image's `pip install` builds the wheel: everything setup.py maps must be in the context
    needed = ["!pyproject.toml", "!setup.py", "!fedward/", *(f"!{c}/" for c in fedward.CONCEPTS)]
    assert set(needed) <= set(ignored), sorted(set(needed) - set(ignored))


def test_the_proxy_image_runs_nginx_with_the_config_server_proxy_renders() -> None:
    from fedward.server.deployment.proxy import DOCKER_CONFIG, render_nginx_config

    assert (DOCKER / "nginx-coordinator.conf").read_text() == render_nginx_config(DOCKER_CONFIG)
    text = (DOCKER / "Dockerfile.proxy").read_text()
    assert "FROM debian:bookworm-slim" in text and "apt-get install -y --no-install-recommends nginx" in text
    assert "COPY nginx-coordinator.conf /etc/nginx/fedward.conf" in text
    for file in ("coordinator.yml", "demo.yml"):
        services = yaml.safe_load((DOCKER / file).read_text())["services"]
        proxy = services["proxy"]
        assert proxy["build"] == {"context": ".", "dockerfile": "Dockerfile.proxy"}
        mounted = str(proxy["volumes"])
        assert "/etc/fedward" in mounted and "operator" not in mounted  # the proxy never holds operator keys
        assert "ports" not in services["superlink"]
    hospital = str(yaml.safe_load((DOCKER / "demo.yml").read_text())["services"]["supernode-a"]["command"])
    assert "proxy:8000" in hospital  # the demo's sites go through the proxy too
