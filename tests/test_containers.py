"""Static checks of the container files: Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine is needed. The compose file is read with PyYAML (anchors and ``<<:``
merge keys resolved, ``${VAR:-default}`` interpolated as Compose does), and every
``exchange`` command it runs is resolved through the CLI's own parser: a renamed
sub-command or option fails here, not in a container at 3 a.m. When a Compose binary is
installed, ``config -q`` validates the file against the Compose schema as well.

Every failure names the service (or Dockerfile line) and the field that is wrong.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REGISTRY = ROOT / "policies" / "registry.yaml"

#: the units of the demo that run a node of their own (XK.KP is relayed by EU.EULEX)
DEMO_NODE_UNITS = (
    "AL.CTD",
    "RS.CTU",
    "ME.ARO",
    "BA.DKPT",
    "MK.CTS",
    "EU.EULEX",
    "AT.ENU",
    "EU.EUROPOL",
)
#: where the image's policies/ folder lives, and the repository folder it comes from
IMAGE_POLICIES = PurePosixPath("/app/policies")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
HUB_COMMAND = ("hub", "serve")
NODE_COMMAND = ("node", "run")
PKI_COMMAND = ("pki", "init")
#: what a separate-host deployment sets (see the comments in docker-compose.yml)
SEPARATE_HOSTS_ENV = {
    "EXCHANGE_HUB": "hub.example.org:7443",
    "EXCHANGE_CERTS_DIR": "/etc/exchange/certs",
}


def report(problems: list[str]) -> str:
    return "\n".join(["", *problems])


# == docker-compose.yml: loading ==========================================================

_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))")


class UnsetVariableError(Exception):
    """A ${VAR} without a default that the environment does not set."""


_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<operator>:?[-?])(?P<rest>.*))?", re.S)


def _substitute(match: re.Match[str], env: dict[str, str]) -> str:
    if match.group("dollar"):
        return "$"
    expression = match.group("braced") or match.group("plain") or ""
    parsed = _EXPRESSION.fullmatch(expression)
    if parsed is None:
        raise UnsetVariableError(f"${{{expression}}} is not a variable reference")
    name, operator, rest = parsed.group("name", "operator", "rest")
    value = env.get(name)
    empty = value is None or (operator is not None and operator.startswith(":") and value == "")
    if operator is None:
        if value is None:
            raise UnsetVariableError(f"${{{expression}}} has no default")
        return value
    if operator.endswith("-"):
        return rest if empty else str(value)
    if empty:
        raise UnsetVariableError(f"${{{expression}}}: {name} must be set ({rest})")
    return str(value)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$`` resolved."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: _substitute(match, env), value)
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    return value


@cache
def raw_compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), "docker-compose.yml: the top level is not a mapping"
    return loaded


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it with ``env`` set (nothing set by default)."""
    return interpolate(raw_compose(), env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict), "docker-compose.yml: `services` is not a mapping"
    assert services, "docker-compose.yml: no `services`"
    return services


def command_tokens(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(token) for token in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (str(entry).partition("=") for entry in environment)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def is_exchange_service(service: dict[str, Any]) -> bool:
    """Built from this repository's Dockerfile, or running the exchange image."""
    image = str(service.get("image", ""))
    return "build" in service or image.split(":", 1)[0].rsplit("/", 1)[-1] == "exchange"


def exchange_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services_of(compose).items() if is_exchange_service(s)}


def sub_command(service: dict[str, Any]) -> tuple[str, ...]:
    """The leading words of the command (``("node", "run")``), options excluded."""
    words = []
    for token in command_tokens(service):
        if token.startswith("-"):
            break
        words.append(token)
    return tuple(words[:2])


def services_running(compose: dict[str, Any], command: tuple[str, ...]) -> dict[str, Any]:
    return {
        name: service
        for name, service in exchange_services(compose).items()
        if sub_command(service) == command
    }


def option_value(tokens: list[str], *names: str) -> str | None:
    """The value given to the first of ``names`` on the command line (``--x v`` or ``--x=v``)."""
    for index, token in enumerate(tokens):
        name, equals, inline = token.partition("=")
        if name in names:
            if equals:
                return inline
            return tokens[index + 1] if index + 1 < len(tokens) else None
    return None


def setting(service: dict[str, Any], option: str, envvar: str) -> str | None:
    """What a service sets for ``option``: its command line first, then its environment."""
    value = option_value(command_tokens(service), option)
    return value if value is not None else environment_of(service).get(envvar)


@dataclass(frozen=True)
class Mount:
    kind: str  # volume, bind or tmpfs
    source: str | None
    target: str
    read_only: bool


def mounts_of(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            kind = str(entry.get("type", "volume"))
            source = entry.get("source")
            mounts.append(
                Mount(kind, source, str(entry["target"]), bool(entry.get("read_only", False)))
            )
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            mounts.append(Mount("volume", None, parts[0], read_only=False))
            continue
        source, target = parts[0], parts[1]
        modes = parts[2].split(",") if len(parts) > 2 else []
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        mounts.append(Mount(kind, source, target, read_only="ro" in modes))
    return mounts


def mount_holding(service: dict[str, Any], path: str) -> Mount | None:
    """The mount under which ``path`` (a container path) lies, the deepest one."""
    best = None
    for mount in mounts_of(service):
        target = PurePosixPath(mount.target)
        candidate = PurePosixPath(path)
        if (candidate == target or target in candidate.parents) and (
            best is None or len(target.parts) > len(PurePosixPath(best.target).parts)
        ):
            best = mount
    return best


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each service depended on, with its condition."""
    declared = service.get("depends_on") or {}
    if isinstance(declared, list):
        return dict.fromkeys((str(name) for name in declared), "service_started")
    return {
        str(name): str((spec or {}).get("condition", "service_started"))
        for name, spec in declared.items()
    }


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if not isinstance(check, dict) or check.get("disable"):
        return False
    test = check.get("test")
    return bool(test) and test != ["NONE"]


def is_one_shot(service: dict[str, Any]) -> bool:
    """Runs to completion: never restarted, and not a server."""
    return service.get("restart", "no") == "no" and sub_command(service) not in (
        HUB_COMMAND,
        NODE_COMMAND,
    )


def host_port_of(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def published_ports(service: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """(host address, published port or None for an ephemeral one, container port)."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            ports.append(
                (
                    str(entry.get("host_ip", "")),
                    int(published) if published is not None else None,
                    int(entry["target"]),
                )
            )
            continue
        text = str(entry).split("/", 1)[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 1:
            ports.append(("", None, int(parts[0])))
        elif len(parts) == 2:
            ports.append(("", int(parts[0]), int(parts[1])))
        else:
            ports.append((parts[0], int(parts[1]), int(parts[2])))
    return ports


def image_path_in_repo(path: str) -> Path | None:
    """The repository file the image carries at container ``path`` (policies only)."""
    candidate = PurePosixPath(path)
    if candidate == IMAGE_POLICIES or IMAGE_POLICIES in candidate.parents:
        return ROOT / "policies" / candidate.relative_to(IMAGE_POLICIES)
    return None


# == the exchange CLI, as its own parser sees it ============================================


@pytest.fixture(scope="module")
def cli() -> Any:
    """The click command tree of the ``exchange`` console script."""
    try:
        import typer.main

        from exchange.cli.main import app
    except ImportError as error:  # the CLI is the product: a broken import is a failure
        pytest.fail(f"cannot import the exchange CLI (exchange.cli.main.app): {error!r}")
    return typer.main.get_command(app)


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def options_of(command: Any) -> dict[str, Any]:
    names = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for name in [*param.opts, *param.secondary_opts]:
                names[name] = param
    return names


def arguments_of(command: Any) -> list[Any]:
    return [p for p in command.params if getattr(p, "param_type_name", "") == "argument"]


def envvars_of(param: Any) -> list[str]:
    envvar = getattr(param, "envvar", None)
    if envvar is None:
        return []
    return [envvar] if isinstance(envvar, str) else list(envvar)


def choices_of(param: Any) -> list[str] | None:
    choices = getattr(getattr(param, "type", None), "choices", None)
    if choices is not None:
        return [str(c.value if isinstance(c, Enum) else c) for c in choices]
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return None


def takes_value(param: Any) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


@dataclass
class Resolution:
    """A command line resolved through the CLI's parser."""

    path: list[str] = field(default_factory=list)
    commands: list[Any] = field(default_factory=list)  # root first, leaf last
    given: set[str] = field(default_factory=set)  # parameter names set on the command line
    problems: list[str] = field(default_factory=list)

    @property
    def leaf(self) -> Any:
        return self.commands[-1]

    @property
    def shown(self) -> str:
        return " ".join(["exchange", *self.path])


def resolve(root: Any, tokens: list[str], where: str) -> Resolution:
    """Walk ``tokens`` through the click tree: sub-commands, options, their values."""
    found = Resolution(commands=[root])
    positional: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        command = found.leaf
        if token.startswith("-") and token != "-":
            name, equals, _ = token.partition("=")
            param = options_of(command).get(name)
            if param is None:
                known = ", ".join(sorted(options_of(command))) or "none"
                found.problems.append(
                    f"{where}: `{found.shown}` has no option {name} (its options: {known})"
                )
                index += 1
                if not equals and index < len(tokens) and not tokens[index].startswith("-"):
                    index += 1  # its presumed value, not an argument
                continue
            found.given.add(param.name)
            index += 1
            if takes_value(param) and not equals:
                if index >= len(tokens):
                    found.problems.append(f"{where}: {name} is given no value")
                    continue
                value = tokens[index]
                index += 1
                choices = choices_of(param)
                if choices is not None and value not in choices:
                    found.problems.append(
                        f"{where}: {name} {value!r} is not one of {', '.join(choices)}"
                    )
            continue
        if is_group(command) and not positional:
            sub = command.commands.get(token)
            if sub is None:
                known = ", ".join(sorted(command.commands)) or "none"
                found.problems.append(
                    f"{where}: `{found.shown}` has no sub-command {token!r} (it has: {known})"
                )
                return found
            found.path.append(token)
            found.commands.append(sub)
            index += 1
            continue
        positional.append(token)
        index += 1
    leaf = found.leaf
    if is_group(leaf):
        found.problems.append(
            f"{where}: `{found.shown}` is a group; name one of its sub-commands "
            f"({', '.join(sorted(leaf.commands))})"
        )
        return found
    arguments = arguments_of(leaf)
    if not any(a.nargs == -1 for a in arguments) and len(positional) > sum(
        max(a.nargs, 0) for a in arguments
    ):
        found.problems.append(
            f"{where}: `{found.shown}` takes {len(arguments)} argument(s), given {positional}"
        )
    for argument in arguments[len(positional) :]:
        if argument.required:
            found.problems.append(
                f"{where}: `{found.shown}` needs the argument {argument.name.upper()}"
            )
    return found


def check_exchange_command(root: Any, name: str, service: dict[str, Any]) -> list[str]:
    """Problems with the exchange command line and environment of one service."""
    where = f"service {name}: command"
    tokens = command_tokens(service)
    if "entrypoint" in service:
        return [f"service {name}: overrides `entrypoint`; the image's is `exchange`"]
    if not tokens:
        return [f"service {name}: no `command` (the image would only print --help)"]
    found = resolve(root, tokens, where)
    if found.problems and not found.path:
        return found.problems
    environment = environment_of(service)
    problems = list(found.problems)
    if is_group(found.leaf):
        return problems
    # A required option must come from the command line or from the environment.
    for param in found.leaf.params:
        if getattr(param, "param_type_name", "") != "option" or not param.required:
            continue
        if param.name in found.given:
            continue
        if any(variable in environment for variable in envvars_of(param)):
            continue
        variables = ", ".join(envvars_of(param)) or "it reads no variable"
        problems.append(
            f"service {name}: `{found.shown}` needs {param.opts[0]}, given neither on the "
            f"command line nor by environment ({variables})"
        )
    # Every EXCHANGE_* variable set must be one the command reads.
    read = {v for command in found.commands for p in command.params for v in envvars_of(p)}
    for variable in sorted(environment):
        if variable.startswith("EXCHANGE_") and variable not in read:
            problems.append(
                f"service {name}: environment sets {variable}, which `{found.shown}` "
                f"does not read (its options read: {', '.join(sorted(read)) or 'none'})"
            )
    return problems


# == the registry ===========================================================================


@pytest.fixture(scope="module")
def registry() -> dict[str, dict[str, Any]]:
    """The units of policies/registry.yaml by id."""
    assert REGISTRY.is_file(), f"{REGISTRY.relative_to(ROOT)} is missing"
    data = yaml.safe_load(REGISTRY.read_text(encoding="utf-8")) or {}
    units = data.get("units") if isinstance(data, dict) else None
    assert isinstance(units, list), "policies/registry.yaml: no `units:` list"
    return {str(unit["id"]): unit for unit in units}


def node_unit(service: dict[str, Any]) -> str | None:
    return setting(service, "--unit", "EXCHANGE_UNIT")


def node_service_name(unit: str) -> str:
    return "node-" + unit.lower().replace(".", "-").replace("_", "-")


# == tests: the compose file against Compose itself =========================================


def compose_binary() -> list[str] | None:
    """``docker compose`` (plugin) or ``docker-compose``, whichever answers ``version``."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            answer = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0:
            return command
    return None


def compose_environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without anything that changes how Compose reads the file."""
    keep = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EXCHANGE_", "COMPOSE_"))
    }
    return {**keep, **extra}


@pytest.mark.parametrize("env", [{}, SEPARATE_HOSTS_ENV], ids=["single-machine", "separate-hosts"])
def test_compose_config_is_valid(env: dict[str, str]) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip(
            "no Compose binary (`docker compose` plugin or `docker-compose`) is installed; "
            "the static checks in this file still run"
        )
    answer = subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=compose_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    errors = answer.stderr.strip()
    if answer.returncode != 0 and re.search(r"daemon|docker\.sock|docker engine", errors, re.I):
        pytest.skip(f"`{' '.join(binary)} config` needs a Docker engine here: {errors[:200]}")
    assert answer.returncode == 0, f"`{' '.join(binary)} config -q` refused the file:\n{errors}"


# == tests: the compose file, statically =====================================================


def test_compose_file_needs_no_variables() -> None:
    try:
        load_compose()
    except UnsetVariableError as error:
        pytest.fail(f"docker-compose.yml: {error}; it must run with no variable set")


def test_compose_yaml_is_unambiguous(compose: dict[str, Any]) -> None:
    """The YAML 1.1 traps: `restart: no` is False, `22:22` is a base-60 number."""
    problems = []
    for name, service in services_of(compose).items():
        if "restart" in service and not isinstance(service["restart"], str):
            problems.append(f"service {name}: restart {service['restart']!r} must be quoted")
        for entry in service.get("ports") or []:
            if not isinstance(entry, (str, dict)):
                problems.append(f"service {name}: port {entry!r} must be a quoted string")
    assert not problems, report(problems)


def test_services_run_real_exchange_commands(compose: dict[str, Any], cli: Any) -> None:
    problems = []
    for name, service in exchange_services(compose).items():
        problems += check_exchange_command(cli, name, service)
    assert not problems, report(problems)


def test_every_demo_unit_has_exactly_its_node(compose: dict[str, Any]) -> None:
    nodes = services_running(compose, NODE_COMMAND)
    problems = []
    units: dict[str, list[str]] = {}
    for name, service in nodes.items():
        unit = node_unit(service)
        if unit is None:
            problems.append(f"service {name}: `node run` names no --unit (nor EXCHANGE_UNIT)")
            continue
        units.setdefault(unit, []).append(name)
        if name != node_service_name(unit):
            problems.append(f"service {name}: runs {unit}, so should be {node_service_name(unit)}")
    for unit in DEMO_NODE_UNITS:
        if unit not in units:
            problems.append(f"unit {unit} of the demo has no node service")
    for unit, names in sorted(units.items()):
        if len(names) > 1:
            problems.append(f"unit {unit} runs in several services: {', '.join(names)}")
        if unit not in DEMO_NODE_UNITS:
            problems.append(f"service {names[0]}: {unit} is not a unit of the demo")
    assert not problems, report(problems)


def test_node_units_are_registered_and_connected(
    compose: dict[str, Any], registry: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for name, service in services_running(compose, NODE_COMMAND).items():
        unit = node_unit(service)
        if unit is None:
            continue  # reported by test_every_demo_unit_has_exactly_its_node
        entry = registry.get(unit)
        if entry is None:
            problems.append(f"service {name}: --unit {unit} is not in policies/registry.yaml")
        elif entry.get("status") == "relayed":
            problems.append(
                f"service {name}: --unit {unit} is relayed (through {entry.get('relay')}); "
                "a relayed unit has no node of its own"
            )
    assert not problems, report(problems)


def test_relayed_units_have_their_relay_running(
    compose: dict[str, Any], registry: dict[str, dict[str, Any]]
) -> None:
    running = {node_unit(s) for s in services_running(compose, NODE_COMMAND).values()}
    problems = []
    for unit, entry in sorted(registry.items()):
        if entry.get("status") != "relayed":
            continue
        relay = entry.get("relay")
        if not relay:
            problems.append(f"registry: {unit} is relayed but names no relay")
        elif relay not in registry:
            problems.append(f"registry: {unit} is relayed by {relay}, which is not registered")
        elif registry[relay].get("status") == "relayed":
            problems.append(f"registry: {unit} is relayed by {relay}, itself a relayed unit")
        elif relay not in running:
            problems.append(
                f"{unit} is relayed by {relay}, but no service runs a node for {relay} "
                f"(expected {node_service_name(relay)})"
            )
    assert not problems, report(problems)


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    problems = []
    used = set()
    for name, service in services_of(compose).items():
        for mount in mounts_of(service):
            if mount.kind == "volume" and mount.source:
                used.add(mount.source)
                if mount.source not in declared:
                    problems.append(
                        f"service {name}: volume {mount.source!r} (at {mount.target}) "
                        "is not declared under the top-level `volumes:`"
                    )
    for volume in sorted(declared - used):
        problems.append(f"volume {volume!r} is declared but no service mounts it")
    assert not problems, report(problems)


def test_dependencies_exist_with_valid_conditions(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    problems = []
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            where = f"service {name}: depends_on {target}"
            if target not in services:
                problems.append(f"{where}: no such service")
                continue
            if condition not in CONDITIONS:
                problems.append(f"{where}: unknown condition {condition!r}")
            elif condition == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(f"{where}: service_healthy, but {target} has no healthcheck")
            elif condition == "service_completed_successfully" and not is_one_shot(
                services[target]
            ):
                problems.append(
                    f"{where}: service_completed_successfully, but {target} is not a one-shot "
                    'service (restart "no", not a server)'
                )
    assert not problems, report(problems)


def test_dependency_order_of_the_region(compose: dict[str, Any]) -> None:
    """PKI first, then the database, then the hub, then the nodes; no cycle."""
    services = services_of(compose)
    pki = set(services_running(compose, PKI_COMMAND))
    hubs = set(services_running(compose, HUB_COMMAND))
    problems = []
    if len(pki) != 1:
        problems.append(f"expected one `pki init` service, found {sorted(pki) or 'none'}")
    if len(hubs) != 1:
        problems.append(f"expected one `hub serve` service, found {sorted(hubs) or 'none'}")
    for name in sorted(pki):
        if services[name].get("restart") != "no":
            problems.append(f'service {name}: a one-shot service needs restart: "no"')
    for hub in sorted(hubs):
        needs = depends_on(services[hub])
        for target in pki:
            if needs.get(target) != "service_completed_successfully":
                problems.append(
                    f"service {hub}: depends_on {target} must be service_completed_successfully"
                )
        database = db_host(services[hub])
        if database in services and needs.get(database) != "service_healthy":
            problems.append(f"service {hub}: depends_on {database} must be service_healthy")
    for name, service in services_running(compose, NODE_COMMAND).items():
        needs = depends_on(service)
        for target in [*hubs, *pki]:
            wanted = "service_healthy" if target in hubs else "service_completed_successfully"
            if needs.get(target) != wanted:
                problems.append(f"service {name}: depends_on {target} must be {wanted}")
    # cycles
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done" or name not in services:
            return
        if state.get(name) == "open":
            problems.append("depends_on cycle: " + " -> ".join([*trail, name]))
            return
        state[name] = "open"
        for target in depends_on(services[name]):
            visit(target, [*trail, name])
        state[name] = "done"

    for name in services:
        visit(name, [])
    assert not problems, report(problems)


def db_host(service: dict[str, Any]) -> str | None:
    url = setting(service, "--db", "EXCHANGE_DB")
    return urlsplit(url).hostname if url else None


def test_hub_database_is_the_postgres_service(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    problems = []
    for name, service in services_running(compose, HUB_COMMAND).items():
        url = setting(service, "--db", "EXCHANGE_DB")
        if url is None:
            problems.append(f"service {name}: no --db / EXCHANGE_DB (the hub would use SQLite)")
            continue
        parts = urlsplit(url)
        if parts.scheme != "postgresql+psycopg":
            problems.append(f"service {name}: EXCHANGE_DB scheme {parts.scheme!r}")
        database = services.get(parts.hostname or "")
        if database is None:
            problems.append(f"service {name}: EXCHANGE_DB host {parts.hostname!r} is no service")
            continue
        env = environment_of(database)
        expected = {
            "user": (parts.username, env.get("POSTGRES_USER")),
            "password": (parts.password, env.get("POSTGRES_PASSWORD")),
            "database": (parts.path.lstrip("/"), env.get("POSTGRES_DB")),
            "port": (parts.port or 5432, 5432),
        }
        for what, (given, wanted) in expected.items():
            if given != wanted:
                problems.append(
                    f"service {name}: EXCHANGE_DB {what} {given!r}, but {parts.hostname} "
                    f"has {wanted!r}"
                )
        if not has_healthcheck(database):
            problems.append(f"service {parts.hostname}: no healthcheck (pg_isready)")
    assert not problems, report(problems)


def test_hub_policies_are_the_image_policies(compose: dict[str, Any]) -> None:
    problems = []
    for name, service in services_running(compose, HUB_COMMAND).items():
        policies = setting(service, "--policies", "EXCHANGE_POLICIES")
        if policies is None:
            problems.append(f"service {name}: no --policies / EXCHANGE_POLICIES")
            continue
        local = image_path_in_repo(policies)
        if local is None or not local.is_dir():
            problems.append(
                f"service {name}: policies {policies} are not the image's {IMAGE_POLICIES}"
            )
            continue
        for needed in ("registry.yaml", "policy.yaml"):
            if not (local / needed).is_file():
                problems.append(f"service {name}: {policies}/{needed} does not exist")
    assert not problems, report(problems)


def test_certificates_are_mounted_read_only_where_used(compose: dict[str, Any]) -> None:
    problems = []
    servers = {
        **services_running(compose, HUB_COMMAND),
        **services_running(compose, NODE_COMMAND),
    }
    assert servers, "docker-compose.yml runs neither a hub nor a node"
    for name, service in servers.items():
        certs = setting(service, "--certs", "EXCHANGE_CERTS")
        if certs is None:
            problems.append(f"service {name}: no --certs / EXCHANGE_CERTS")
            continue
        mount = mount_holding(service, certs)
        if mount is None:
            problems.append(f"service {name}: certificates {certs} are not mounted")
        elif not mount.read_only:
            problems.append(f"service {name}: the mount at {mount.target} must be read-only (:ro)")
    for name, service in services_running(compose, PKI_COMMAND).items():
        out = option_value(command_tokens(service), "--out")
        mount = mount_holding(service, out) if out else None
        if mount is None or mount.kind != "volume" or mount.read_only:
            problems.append(f"service {name}: --out {out} must be a writable named volume")
        registry = option_value(command_tokens(service), "--registry")
        if registry is not None:
            local = image_path_in_repo(registry)
            if local is None or not local.is_file():
                problems.append(f"service {name}: --registry {registry} is not in the image")
    assert not problems, report(problems)


def test_certificates_come_from_the_pki_volume(compose: dict[str, Any]) -> None:
    """Hub and nodes read the volume the `pki` service writes (on a single machine)."""
    written = set()
    for service in services_running(compose, PKI_COMMAND).values():
        out = option_value(command_tokens(service), "--out")
        mount = mount_holding(service, out) if out else None
        if mount is not None and mount.source:
            written.add(mount.source)
    problems = []
    servers = {
        **services_running(compose, HUB_COMMAND),
        **services_running(compose, NODE_COMMAND),
    }
    for name, service in servers.items():
        certs = setting(service, "--certs", "EXCHANGE_CERTS")
        mount = mount_holding(service, certs) if certs else None
        if mount is not None and mount.source not in written:
            problems.append(
                f"service {name}: /certs comes from {mount.source!r}, which no pki service "
                f"writes ({', '.join(sorted(written)) or 'none'})"
            )
    assert not problems, report(problems)


def test_separate_hosts_mode(compose: dict[str, Any]) -> None:
    """With EXCHANGE_HUB and EXCHANGE_CERTS_DIR set, nodes reach that hub with host files."""
    remote = load_compose(SEPARATE_HOSTS_ENV)
    problems = []
    for name, service in services_running(remote, NODE_COMMAND).items():
        hub = setting(service, "--hub", "EXCHANGE_HUB")
        if hub != SEPARATE_HOSTS_ENV["EXCHANGE_HUB"]:
            problems.append(f"service {name}: EXCHANGE_HUB from the host is ignored ({hub!r})")
    servers = {
        **services_running(remote, HUB_COMMAND),
        **services_running(remote, NODE_COMMAND),
    }
    for name, service in servers.items():
        certs = setting(service, "--certs", "EXCHANGE_CERTS")
        mount = mount_holding(service, certs) if certs else None
        wanted = SEPARATE_HOSTS_ENV["EXCHANGE_CERTS_DIR"]
        if mount is None or mount.kind != "bind" or mount.source != wanted:
            problems.append(f"service {name}: EXCHANGE_CERTS_DIR does not replace /certs")
        elif not mount.read_only:
            problems.append(f"service {name}: the host folder at {mount.target} must be :ro")
    assert not problems, report(problems)


def test_nodes_have_their_own_writable_home(compose: dict[str, Any]) -> None:
    problems = []
    owners: dict[str, str] = {}
    for name, service in services_running(compose, NODE_COMMAND).items():
        unit = node_unit(service)
        home = setting(service, "--home", "EXCHANGE_HOME")
        if home is None:
            problems.append(f"service {name}: no --home / EXCHANGE_HOME")
            continue
        if unit and PurePosixPath(home).name != unit:
            problems.append(f"service {name}: --home {home} should end with the unit, {unit}")
        mount = mount_holding(service, home)
        if mount is None or mount.kind != "volume" or not mount.source:
            problems.append(f"service {name}: --home {home} is not on a named volume")
            continue
        if mount.read_only:
            problems.append(f"service {name}: the home volume {mount.source} is read-only")
        if mount.source in owners:
            problems.append(
                f"service {name}: home volume {mount.source} is also {owners[mount.source]}'s"
            )
        owners[mount.source] = name
    assert not problems, report(problems)


def test_nodes_point_at_the_hub(compose: dict[str, Any]) -> None:
    hubs = services_running(compose, HUB_COMMAND)
    problems = []
    for name, service in services_running(compose, NODE_COMMAND).items():
        address = setting(service, "--hub", "EXCHANGE_HUB")
        if address is None:
            problems.append(f"service {name}: no --hub / EXCHANGE_HUB")
            continue
        host, port = host_port_of(address)
        hub = hubs.get(host)
        if hub is None:
            problems.append(f"service {name}: hub address {address}: {host} is no hub service")
            continue
        listen = setting(hub, "--listen", "EXCHANGE_LISTEN")
        if listen is None or host_port_of(listen)[1] != port:
            problems.append(f"service {name}: hub address {address}, but {host} listens {listen}")
    assert not problems, report(problems)


def test_hub_port_is_published_and_health_checked(compose: dict[str, Any]) -> None:
    problems = []
    for name, service in services_running(compose, HUB_COMMAND).items():
        listen = setting(service, "--listen", "EXCHANGE_LISTEN")
        if listen is None:
            problems.append(f"service {name}: no --listen / EXCHANGE_LISTEN")
            continue
        host, port = host_port_of(listen)
        if host not in ("0.0.0.0", "::", ""):
            problems.append(f"service {name}: listens on {host}, unreachable from other hosts")
        if port not in {target for _, _, target in published_ports(service)}:
            problems.append(f"service {name}: port {port} is not published (`ports:`)")
        if not has_healthcheck(service):
            problems.append(f"service {name}: no healthcheck")
            continue
        test = json.dumps(service["healthcheck"]["test"])
        if str(port) not in test:
            problems.append(f"service {name}: the healthcheck does not probe port {port}")
    assert not problems, report(problems)


def test_published_ports_are_unique(compose: dict[str, Any]) -> None:
    seen: dict[tuple[str, int], str] = {}
    problems = []
    for name, service in services_of(compose).items():
        for host, published, _ in published_ports(service):
            if published is None:
                continue
            key = (host or "0.0.0.0", published)
            if key in seen:
                problems.append(f"service {name}: host port {published} is also {seen[key]}'s")
            seen[key] = name
    assert not problems, report(problems)


def test_image_build_gets_no_certificates(compose: dict[str, Any]) -> None:
    problems = []
    for name, service in services_of(compose).items():
        build = service.get("build")
        if build is None:
            continue
        spec = {"context": build} if isinstance(build, str) else build
        if (ROOT / str(spec.get("context", "."))).resolve() != ROOT:
            problems.append(f"service {name}: build context {spec.get('context')!r} is not .")
        dockerfile = spec.get("dockerfile", "Dockerfile")
        if dockerfile != "Dockerfile":
            problems.append(f"service {name}: builds {dockerfile!r}, not the checked Dockerfile")
        for key in ("secrets", "additional_contexts", "ssh"):
            if spec.get(key):
                problems.append(f"service {name}: build.{key} brings files into the build")
        if "certs" in json.dumps(spec.get("args") or {}):
            problems.append(f"service {name}: build.args mention certs")
    assert not problems, report(problems)


# == Dockerfile =============================================================================


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    @property
    def where(self) -> str:
        return f"Dockerfile line {self.line} ({self.keyword})"


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, also inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, args = pending.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending = ""
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


_PYTHON_311_SLIM = re.compile(
    r"^(docker\.io/)?(library/)?python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$"
)


def from_parts(instruction: Instruction) -> tuple[str, str | None]:
    words = [w for w in instruction.args.split() if not w.startswith("--")]
    image = words[0]
    alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return image, alias


def test_dockerfile_bases_are_python_311_slim(dockerfile: list[Instruction]) -> None:
    problems = []
    aliases: set[str] = set()
    all_stages = stages(dockerfile)
    assert all_stages, "Dockerfile: no FROM"
    for index, stage in enumerate(all_stages):
        image, alias = from_parts(stage[0])
        final = index == len(all_stages) - 1
        if image in aliases and not final:
            pass
        elif not _PYTHON_311_SLIM.match(image):
            problems.append(f"{stage[0].where}: base {image!r} is not python:3.11-slim")
        if alias:
            aliases.add(alias)
    assert not problems, report(problems)


def test_dockerfile_runs_as_non_root_exchange(dockerfile: list[Instruction]) -> None:
    final = stages(dockerfile)[-1]
    problems = []
    users = [i for i in final if i.keyword == "USER"]
    entrypoints = [i for i in final if i.keyword == "ENTRYPOINT"]
    if not entrypoints:
        problems.append("Dockerfile: the final stage has no ENTRYPOINT")
    elif not users or users[0].line > entrypoints[-1].line:
        problems.append(f"{entrypoints[-1].where}: no USER instruction before it")
    if users:
        user = users[-1].args.split(":", 1)[0]
        if user in ("root", "0"):
            problems.append(f"{users[-1].where}: the image runs as root")
        elif user not in ("exchange", "10001"):
            problems.append(f"{users[-1].where}: runs as {user!r}, expected exchange (10001)")
    creation = " ".join(i.args for i in final if i.keyword == "RUN" and "useradd" in i.args)
    if not re.search(r"--uid[ =]10001\b", creation) or not re.search(r"\bexchange\b", creation):
        problems.append("Dockerfile: no `useradd --uid 10001 ... exchange` in the final stage")
    if entrypoints:
        try:
            form = json.loads(entrypoints[-1].args)
        except json.JSONDecodeError:
            form = None
        if form != ["exchange"]:
            problems.append(f'{entrypoints[-1].where}: expected ENTRYPOINT ["exchange"]')
    workdirs = [i.args for i in final if i.keyword == "WORKDIR"]
    if not workdirs or workdirs[-1] != "/app":
        problems.append(f"Dockerfile: the final WORKDIR is {workdirs[-1:]}, expected /app")
    assert not problems, report(problems)


def copy_sources(instruction: Instruction) -> tuple[list[str], str, str | None]:
    """(sources, destination, --from stage) of a COPY or ADD."""
    args = instruction.args
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    stage = None
    plain = []
    for word in words:
        if word.startswith("--from="):
            stage = word.split("=", 1)[1]
        elif not word.startswith("--"):
            plain.append(word)
    return plain[:-1], plain[-1], stage


_SECRET_SOURCE = re.compile(r"(^|/)certs(/|$)|\.(key|pem|crt|p12)$|(^|/)\*$")


def test_dockerfile_copies_no_certificates_or_keys(dockerfile: list[Instruction]) -> None:
    problems = []
    for instruction in dockerfile:
        if instruction.keyword in ("COPY", "ADD"):
            sources, _, stage = copy_sources(instruction)
            for source in sources:
                if stage is None and source in (".", "./"):
                    problems.append(
                        f"{instruction.where}: copies the whole context; copy named folders"
                    )
                elif _SECRET_SOURCE.search(source.rstrip("/")):
                    problems.append(f"{instruction.where}: copies {source!r} into the image")
        if instruction.keyword == "RUN" and re.search(r"--mount=\S*certs", instruction.args):
            problems.append(f"{instruction.where}: mounts certificates into the build")
    assert not problems, report(problems)


def test_dockerfile_copies_policies_to_app(dockerfile: list[Instruction]) -> None:
    final = stages(dockerfile)[-1]
    for instruction in final:
        if instruction.keyword == "COPY":
            sources, destination, stage = copy_sources(instruction)
            if stage is None and [s.rstrip("/") for s in sources] == ["policies"]:
                assert destination.rstrip("/") == str(IMAGE_POLICIES), (
                    f"{instruction.where}: policies/ goes to {destination}, not {IMAGE_POLICIES}"
                )
                return
    pytest.fail(f"Dockerfile: the final stage does not COPY policies/ to {IMAGE_POLICIES}")


def test_dockerfile_installs_with_constraints(dockerfile: list[Instruction]) -> None:
    problems = []
    installs = 0
    for stage in stages(dockerfile):
        copied: set[str] = set()
        for instruction in stage:
            if instruction.keyword == "COPY":
                sources, _, stage_name = copy_sources(instruction)
                if stage_name is None:
                    copied.update(PurePosixPath(s).name for s in sources)
            if instruction.keyword != "RUN" or "pip install" not in instruction.args:
                continue
            for command in re.split(r"&&|;", instruction.args):
                words = shlex.split(command)
                if "install" not in words or not any(w.endswith("pip") for w in words[:3]):
                    continue
                if not ({".", "./"} & set(words) or any(w.endswith(".whl") for w in words)):
                    continue  # not the project (pip itself, say)
                installs += 1
                where = instruction.where
                constraint = option_value(words, "-c", "--constraint")
                if constraint is None or PurePosixPath(constraint).name != "constraints.txt":
                    problems.append(f"{where}: pip install without -c constraints.txt")
                elif "constraints.txt" not in copied:
                    problems.append(f"{where}: constraints.txt is not copied before it")
                if "--no-cache-dir" not in words:
                    problems.append(f"{where}: pip install without --no-cache-dir")
    if installs == 0:
        problems.append("Dockerfile: no `pip install ... .` of the project")
    assert not problems, report(problems)


def test_dockerfile_sources_exist_and_reach_the_build(dockerfile: list[Instruction]) -> None:
    problems = []
    for instruction in dockerfile:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        sources, _, stage = copy_sources(instruction)
        if stage is not None:
            continue
        for source in sources:
            path = ROOT / source
            if not path.exists():
                problems.append(f"{instruction.where}: {source} does not exist")
            elif dockerignored(source.rstrip("/")):
                problems.append(f"{instruction.where}: {source} is excluded by .dockerignore")
    assert not problems, report(problems)


# == .dockerignore ==========================================================================


def _glob_regex(pattern: str) -> str:
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", index)
            if end == -1:
                out.append(re.escape(char))
            else:
                out.append(pattern[index : end + 1])
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


@cache
def dockerignore_patterns() -> tuple[tuple[bool, str], ...]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        patterns.append((negate, _glob_regex(line)))
    return tuple(patterns)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (a pattern matches it or a parent)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in dockerignore_patterns():
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        "certs",
        "certs/dev/ca/ca.key",
        "certs/dev/units/AL.CTD/tls.key",
        "somewhere/else/tls.key",
        "ca.pem",
        ".venv/bin/python",
        ".git/HEAD",
        "hub.db",
        "var/nodes/AL.CTD/node.db",
        ".pytest_cache/v/cache/lastfailed",
        "exchange/__pycache__/errors.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    assert dockerignored(path), f".dockerignore lets {path} into the build context"


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "constraints.txt", "README.md", "exchange/cli/main.py", "policies"],
)
def test_dockerignore_keeps_what_the_build_needs(path: str) -> None:
    assert not dockerignored(path), f".dockerignore leaves {path} out of the build context"
