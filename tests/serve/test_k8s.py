"""Specification of ``fournines.serve.k8s`` and ``fournines k8s manifest``: manifests that are
valid Kubernetes (checked offline against the API schemas), whose grace period follows from
the drain, whose command ``fournines serve`` accepts, and whose probes it answers."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fournines import ConfigurationError
from fournines.asgi import GracefulShutdown
from fournines.asgi.health import DEFAULT_PATHS
from fournines.cli import main
from fournines.serve import _cli as serve_cli
from fournines.serve.k8s import (
    PROBES,
    ManifestError,
    ManifestSpec,
    load_spec,
    manifest_documents,
    manifest_yaml,
    spec_from_mapping,
)

from .._servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# The oldest Kubernetes the manifests must be valid for (unhealthyPodEvictionPolicy is GA
# in 1.31), and the newest schema kubernetes-validate ships (pinned in pyproject.toml).
KUBERNETES = ["1.31.0", "1.37.0"]
EXAMPLE_COMMAND = ["k8s", "manifest", "--config", "examples/k8s/orders.yml",
                   "-o", "examples/k8s/deployment.yaml"]


def spec(**changes: Any) -> ManifestSpec:
    return ManifestSpec(**{"name": "orders", "image": "registry.example.com/orders:1.2.3",
                           "app": "orders.main:service", **changes})


def kinds(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in documents}


def container(manifest: ManifestSpec) -> dict[str, Any]:
    pod = kinds(manifest_documents(manifest))["Deployment"]["spec"]["template"]["spec"]
    return pod["containers"][0]  # type: ignore[no-any-return]


SPECS = {
    "defaults": spec(),
    "everything": spec(namespace="shop", replicas=5, workers=4, factory=True, port=9000,
                       service_port=8080, drain_delay=2.5, drain_timeout=7.25, margin=3,
                       cpu="1", memory="1Gi", cpu_limit="2", memory_limit=None,
                       env={"LOG_LEVEL": "debug", "FLAG": "yes", "EMPTY": ""},
                       secret_env={"DATABASE_URL": "orders-db/url"},
                       serve_args=("--max-requests", "10000"), max_surge=2,
                       pdb_max_unavailable=2),
}


# -- valid Kubernetes ----------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("name", SPECS)
def test_every_document_is_valid_against_the_kubernetes_schemas(name: str, version: str) -> None:
    for document in yaml.safe_load_all(manifest_yaml(SPECS[name])):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    deployment = kinds(manifest_documents(spec()))["Deployment"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES[0], strict=True)


@pytest.mark.parametrize("comments", [True, False])
@pytest.mark.parametrize("name", SPECS)
def test_the_yaml_reads_back_as_the_documents(name: str, comments: bool) -> None:
    text = manifest_yaml(SPECS[name], comments=comments)

    assert list(yaml.safe_load_all(text)) == manifest_documents(SPECS[name])
    assert ("#" in text) is comments


# Any character, lone surrogates included, and often the pieces of JSON's escapes.
VALUES = st.text(st.characters(exclude_categories=()) | st.sampled_from("\\ud8c0\"'#:- "))


@settings(max_examples=200, deadline=None)
@given(VALUES, VALUES)
def test_any_environment_value_reads_back_as_it_was(value: str, other: str) -> None:
    manifest = spec(env={"VALUE": value, "OTHER": other})

    documents = list(yaml.safe_load_all(manifest_yaml(manifest)))

    env = documents[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "VALUE", "value": value} in env
    assert {"name": "OTHER", "value": other} in env


# -- the grace period follows from the drain -----------------------------------------------

def test_the_default_grace_period_is_the_seeds_30_seconds() -> None:
    pod = kinds(manifest_documents(spec()))["Deployment"]["spec"]["template"]["spec"]

    assert pod["terminationGracePeriodSeconds"] == 30 == 5 + 20 + 5


def test_the_grace_period_is_drain_delay_plus_drain_timeout_plus_margin_rounded_up() -> None:
    manifest = spec(drain_delay=2.5, drain_timeout=10, margin=1.2)

    assert manifest.termination_grace_period == math.ceil(2.5 + 10 + 1.2) == 14


def test_drain_seconds_reach_the_command_exactly() -> None:
    command = container(spec(drain_delay=1234567.5, drain_timeout=0.1))["command"]

    assert command[command.index("--drain-delay") + 1] == "1234567.5"
    assert command[command.index("--drain-timeout") + 1] == "0.1"


def test_a_grace_period_that_covers_the_drain_is_kept() -> None:
    assert spec(grace_period=60).termination_grace_period == 60
    assert spec(grace_period=30).termination_grace_period == 30


def test_a_grace_period_shorter_than_the_drain_and_margin_is_refused() -> None:
    with pytest.raises(ManifestError) as info:
        spec(drain_delay=5, drain_timeout=20, margin=5, grace_period=29)

    assert info.value.field == "grace_period"
    assert str(info.value) == (
        "ManifestSpec.grace_period must be >= drain_delay + drain_timeout + margin = "
        "5 + 20 + 5 = 30 s, or the kubelet kills the pod mid-drain; got 29")


def test_a_manifest_error_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        spec(port=0)


# -- the container -------------------------------------------------------------------------

def test_the_command_is_fournines_serve_in_exec_form_with_the_drain() -> None:
    command = container(spec(workers=2, port=9000))["command"]

    assert command == ["fournines", "serve", "orders.main:service", "--workers", "2",
                       "--bind", "0.0.0.0:9000", "--drain-delay", "5", "--drain-timeout", "20",
                       "--grace-period", "30"]
    assert "args" not in container(spec())


@pytest.mark.parametrize("name", SPECS)
def test_fournines_serve_accepts_the_command_and_its_drain(name: str) -> None:
    manifest = SPECS[name]
    parser = argparse.ArgumentParser(prog="fournines")
    serve_cli.register(parser.add_subparsers(dest="command"))

    args = parser.parse_args(container(manifest)["command"][1:])

    assert (args.app, args.workers, args.bind, args.factory) == (
        manifest.app, manifest.workers, [f"0.0.0.0:{manifest.port}"], manifest.factory)
    assert (args.drain_delay, args.drain_timeout, args.grace_period) == (
        manifest.drain_delay, manifest.drain_timeout, manifest.termination_grace_period)
    GracefulShutdown(drain_delay=args.drain_delay, drain_timeout=args.drain_timeout,
                     grace_period=args.grace_period)


def test_every_probe_has_the_seeds_delay_and_timeout_on_fournines_paths() -> None:
    probes = {name: container(spec())[name] for name in PROBES}

    assert {name: probe["httpGet"]["path"] for name, probe in probes.items()} == {
        "startupProbe": DEFAULT_PATHS["startup"], "livenessProbe": DEFAULT_PATHS["live"],
        "readinessProbe": DEFAULT_PATHS["ready"]}
    for probe in probes.values():
        assert (probe["initialDelaySeconds"], probe["timeoutSeconds"]) == (10, 1)
        assert probe["httpGet"]["port"] == "http"


def test_the_instance_id_comes_from_the_pods_name() -> None:
    env = container(spec())["env"]

    assert env[0] == {"name": "POD_NAME",
                      "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def test_requests_are_set_and_there_is_no_cpu_limit_by_default() -> None:
    assert container(spec())["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def test_several_workers_share_an_in_memory_metrics_directory() -> None:
    documents = kinds(manifest_documents(spec(workers=3)))
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}

    mount = pod["containers"][0]["volumeMounts"][0]
    assert env["PROMETHEUS_MULTIPROC_DIR"] == mount["mountPath"]
    assert pod["volumes"] == [{"name": mount["name"], "emptyDir": {"medium": "Memory"}}]
    assert "volumes" not in kinds(manifest_documents(spec()))["Deployment"]["spec"]["template"][
        "spec"]


def test_secrets_are_referenced_never_inlined() -> None:
    env = container(spec(secret_env={"DATABASE_URL": "orders-db/url"}))["env"]

    assert {"name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "orders-db", "key": "url"}}} in env


# -- rollout and disruptions ---------------------------------------------------------------

def test_a_rolling_update_never_goes_below_the_replicas() -> None:
    strategy = kinds(manifest_documents(spec(max_surge=2)))["Deployment"]["spec"]["strategy"]

    assert strategy == {"type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 2}}


def test_the_service_and_the_budget_select_the_deployments_pods() -> None:
    documents = kinds(manifest_documents(spec(pdb_max_unavailable=1)))
    labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]

    assert documents["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert documents["Service"]["spec"]["selector"] == labels
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert documents["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert documents["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http"}]


# -- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "field", "problem"), [
    ({"port": 0}, "port", "must be an int from 1 to 65535, got 0"),
    ({"port": "http"}, "port", "must be an int from 1 to 65535, got 'http'"),
    ({"port": True}, "port", "must be an int from 1 to 65535, got True"),
    ({"service_port": 70000}, "service_port", "must be an int from 1 to 65535, got 70000"),
    ({"workers": 0}, "workers", "must be an int from 1 to 1024, got 0"),
    ({"replicas": 1}, "replicas", "must be more than pdb_max_unavailable (1)"),
    ({"name": "Orders"}, "name", "must be an RFC 1035 label"),
    ({"name": "orders_v2"}, "name", "must be an RFC 1035 label"),
    ({"app": "orders"}, "app", "must be MODULE:APP"),
    ({"image": "has space"}, "image", "must be an image reference"),
    ({"namespace": "Shop"}, "namespace", "must be an RFC 1123 label"),
    ({"drain_delay": 0}, "drain_delay", "must be >= 1 (the endpoints update as SIGTERM"),
    ({"drain_timeout": float("nan")}, "drain_timeout", "must be a finite number of seconds"),
    ({"drain_timeout": None}, "drain_timeout", "must be a finite number of seconds"),
    ({"margin": 0}, "margin", "must be > 0, got 0"),
    ({"grace_period": 40.5}, "grace_period", "must be an int from 1 to 86400, got 40.5"),
    ({"cpu": "lots"}, "cpu", "must be a quantity like '250m'"),
    ({"memory_limit": "1 GB"}, "memory_limit", "must be a quantity"),
    ({"factory": "yes"}, "factory", "must be true or false"),
    ({"env": {"POD_NAME": "x"}}, "env", "['POD_NAME'] is set by the manifest itself"),
    ({"env": {"PROMETHEUS_MULTIPROC_DIR": "/tmp"}, "workers": 2}, "env",
     "['PROMETHEUS_MULTIPROC_DIR'] is set by the manifest itself"),
    ({"env": {"PORT": 8000}}, "env", "['PORT'] must be a string, got 8000"),
    ({"env": {"1X": "a"}}, "env", "has a bad variable name '1X'"),
    ({"env": ["A=1"]}, "env", "must be a mapping of names to strings"),
    ({"secret_env": {"DB": "no-key"}}, "secret_env", "['DB'] must be 'SECRET/KEY'"),
    ({"secret_env": {"A": "s/k"}, "env": {"A": "1"}}, "secret_env", "['A'] is in env too"),
    ({"serve_args": ("--bind", "0.0.0.0:1")}, "serve_args", "must not contain --bind"),
    ({"serve_args": ("--grace-period=99",)}, "serve_args", "must not contain --grace-period"),
    ({"serve_args": "--max-requests 9"}, "serve_args", "must be a list of strings"),
    ({"serve_args": ("--grace=99",)}, "serve_args", "must not contain --grace-period"),
    ({"serve_args": ("--max-requets", "9")}, "serve_args",
     "are refused by fournines serve: unrecognized arguments: --max-requets 9"),
    ({"serve_args": ("--max-requests", "many")}, "serve_args",
     "are refused by fournines serve: argument --max-requests: invalid int value: 'many'"),
    ({"memory": "1Gi", "memory_limit": "512Mi"}, "memory_limit",
     "must be at least the memory request (1Gi), got '512Mi'"),
    ({"cpu": "500m", "cpu_limit": "0.25"}, "cpu_limit",
     "must be at least the cpu request (500m), got '0.25'"),
])
def test_bad_settings_are_refused_naming_the_field(
        changes: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        spec(**changes)

    assert info.value.field == field
    assert info.value.problem.startswith(problem)
    assert str(info.value).startswith(f"ManifestSpec.{field} {problem}")


def test_an_unknown_field_is_refused_naming_it() -> None:
    with pytest.raises(ManifestError) as info:
        spec_from_mapping({"name": "orders", "image": "i", "app": "a:b", "replica": 3})

    assert info.value.field == "replica"
    assert info.value.problem.startswith("is not a field (fields: name, image, app,")


def test_a_missing_required_field_is_named() -> None:
    with pytest.raises(ManifestError, match=r"^ManifestSpec\.app is required$"):
        spec_from_mapping({"name": "orders", "image": "i"})


def test_numeric_quantities_of_a_file_are_kubernetes_quantities() -> None:
    manifest = spec_from_mapping({"name": "orders", "image": "i", "app": "a:b", "cpu": 0.5,
                                  "cpu_limit": 2, "memory_limit": 1e9,
                                  "serve_args": ["--max-requests", "9"]})

    assert (manifest.cpu, manifest.cpu_limit, manifest.memory_limit, manifest.serve_args) == (
        "0.5", "2", "1000000000", ("--max-requests", "9"))


# -- the YAML file -------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orders.yml"
    path.write_text(text)
    return path


def test_a_spec_file_is_read_with_its_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "name: orders\nimage: i:1\napp: orders.main:service\nworkers: 2\n"
                           "drain_timeout: 10\nenv: {A: '1'}\n")

    assert load_spec(path) == ManifestSpec(name="orders", image="i:1",
                                           app="orders.main:service", workers=2,
                                           drain_timeout=10, env={"A": "1"})


def test_a_bad_field_of_a_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "name: orders\nimage: i\napp: a:b\nport: http\n")

    with pytest.raises(ManifestError) as info:
        load_spec(path)

    assert str(info.value) == f"{path}: port must be an int from 1 to 65535, got 'http'"


@pytest.mark.parametrize(("text", "problem"), [
    ("- name: orders\n", "must be a mapping of ManifestSpec fields, got list"),
    ("name: a\n---\nname: b\n", "must hold one YAML document, found 2"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_a_file_that_is_no_spec_is_refused_naming_it(
        tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as info:
        load_spec(path)

    assert str(info.value).startswith(f"{path}: {problem}")


def test_overrides_are_judged_together_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: orders\nimage: i\napp: a:b\ngrace_period: 20\nenv: {A: '1'}\n")

    manifest = load_spec(path, {"drain_delay": 2, "drain_timeout": 10, "env": {"B": "2"}})

    assert manifest.termination_grace_period == 20
    assert dict(manifest.env) == {"A": "1", "B": "2"}


def test_a_bad_override_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: orders\nimage: i\napp: a:b\n")

    with pytest.raises(ManifestError) as info:
        load_spec(path, {"port": 0})

    assert (info.value.field, info.value.file) == ("port", None)


# -- the command line ----------------------------------------------------------------------

FLAGS = ["k8s", "manifest", "--name", "orders", "--image", "registry.example.com/orders:1.2.3",
         "--app", "orders.main:service"]


def test_the_command_prints_the_manifest_of_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FLAGS, "--workers", "2", "--env", "A=1", "--secret-env", "DB=db/url",
                 "--serve-arg=--max-requests", "--serve-arg=9"]) == 0

    assert capsys.readouterr().out == manifest_yaml(spec(
        workers=2, env={"A": "1"}, secret_env={"DB": "db/url"},
        serve_args=("--max-requests", "9")))


def test_the_command_writes_its_output_file(tmp_path: Path) -> None:
    out = tmp_path / "deployment.yaml"

    assert main([*FLAGS, "--no-comments", "-o", str(out)]) == 0

    assert out.read_text() == manifest_yaml(spec(), comments=False)
    assert [p.name for p in tmp_path.iterdir()] == ["deployment.yaml"]


def test_flags_override_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "name: orders\nimage: i\napp: a:b\nreplicas: 4\nport: 9000\n")

    assert main(["k8s", "manifest", "--config", str(path), "--port", "9100"]) == 0

    assert capsys.readouterr().out == manifest_yaml(
        spec(image="i", app="a:b", replicas=4, port=9100), source=str(path))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fournines", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


@pytest.mark.parametrize(("extra", "config", "message"), [
    (["--grace-period", "20"], None,
     "--grace-period must be >= drain_delay + drain_timeout + margin = 5 + 20 + 5 = 30 s, or "
     "the kubelet kills the pod mid-drain; got 20"),
    (["--port", "70000"], None, "--port must be an int from 1 to 65535, got 70000"),
    (["--drain-delay", "0.5"], None, "--drain-delay must be >= 1"),
    (["--env", "NOVALUE"], None, "--env must be NAME=VALUE, got 'NOVALUE'"),
    ([], "name: orders\nimage: i\napp: a:b\nreplica: 3\n", "{config}: replica is not a field"),
    ([], "name: orders\nimage: i\napp: a:b\nport: http\n",
     "{config}: port must be an int from 1 to 65535, got 'http'"),
    (["--drain-timeout", "30"], "name: orders\nimage: i\napp: a:b\ngrace_period: 30\n",
     "{config}: grace_period must be >= drain_delay + drain_timeout + margin = 5 + 30 + 5"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
        tmp_path: Path, extra: list[str], config: str | None, message: str) -> None:
    out = tmp_path / "deployment.yaml"
    out.write_text("the old manifest\n")
    args = [*FLAGS, *extra] if config is None else [
        "k8s", "manifest", "--config", str(write(tmp_path, config)), *extra]

    done = run(*args, "-o", str(out))

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"fournines k8s manifest: error: {message.format(config=tmp_path / 'orders.yml')}")
    assert "Traceback" not in done.stderr
    assert out.read_text() == "the old manifest\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["deployment.yaml", *(["orders.yml"] if config else [])])


def test_a_missing_required_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["k8s", "manifest", "--name", "orders", "--image", "i"])

    assert info.value.code == 2
    assert "fournines k8s manifest: error: --app is required (or --config FILE)" in (
        capsys.readouterr().err)


def test_an_output_that_cannot_be_written_exits_1(tmp_path: Path) -> None:
    done = run(*FLAGS, "-o", str(tmp_path / "missing" / "deployment.yaml"))

    assert done.returncode == 1
    assert done.stderr.startswith("fournines k8s manifest: error: cannot write ")
    assert "Traceback" not in done.stderr


def test_k8s_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["k8s"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: fournines k8s ")


# -- the example never drifts --------------------------------------------------------------

def test_the_example_is_what_its_documented_command_generates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    documented = "fournines " + " ".join(EXAMPLE_COMMAND)
    assert documented in (ROOT / "examples/k8s/orders.yml").read_text()
    assert documented in (ROOT / "README.md").read_text()
    monkeypatch.chdir(ROOT)
    out = tmp_path / "deployment.yaml"

    assert main([*EXAMPLE_COMMAND[:-1], str(out)]) == 0

    assert out.read_text() == (ROOT / "examples/k8s/deployment.yaml").read_text(), (
        "examples/k8s/deployment.yaml drifted: regenerate it with `" + documented + "`")


# -- the manifest's command really serves its probes and drains in its grace period --------

APP = '''
from fournines.asgi import protect

async def hello(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})

service = protect(hello, service="orders")
'''


def probe(url: str, timeout: float) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_the_manifests_command_serves_its_probes_and_drains_within_its_grace_period(
        tmp_path: Path) -> None:
    (tmp_path / "hello_k8s.py").write_text(APP)
    manifest = spec(app="hello_k8s:service", workers=2, port=free_port(), drain_delay=1,
                    drain_timeout=2, margin=10)
    pod = kinds(manifest_documents(manifest))["Deployment"]["spec"]["template"]["spec"]
    box = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in box["ports"]}
    env = {item["name"]: item.get("value") for item in box["env"]}
    env["POD_NAME"] = "orders-7d4b9c-x2x7q"  # what the downward API puts there
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    (tmp_path / "metrics").mkdir()
    assert box["command"][0] == "fournines"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fournines", *box["command"][1:]], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answers: dict[str, tuple[int, dict[str, str]]] = {}
        end = time.monotonic() + 60
        while len(answers) < len(PROBES) and time.monotonic() < end and proc.poll() is None:
            for name, settings_ in PROBES.items():
                url = f"http://127.0.0.1:{ports[settings_['httpGet']['port']]}" + (
                    settings_["httpGet"]["path"])
                try:
                    status, headers = probe(url, settings_["timeoutSeconds"])
                except OSError:
                    time.sleep(0.1)
                    continue
                if status == 200:
                    answers[name] = (status, headers)
        assert sorted(answers) == sorted(PROBES), proc.stdout.read() if proc.poll() else ""
        assert {headers["x-instance-id"] for _, headers in answers.values()} == {
            "orders-7d4b9c-x2x7q"}

        proc.send_signal(signal.SIGTERM)
        # The kubelet SIGKILLs at the grace period: a drain that needs longer loses requests.
        output, _ = proc.communicate(timeout=pod["terminationGracePeriodSeconds"])
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_spec_is_a_frozen_keyword_only_dataclass() -> None:
    manifest = spec(env={"A": "1"})

    assert hash(manifest) == hash(spec(env={"A": "1"}))
    assert manifest != spec(env={"A": "2"})

    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ManifestSpec("orders", "i", "a:b")  # type: ignore[misc]


def test_the_default_memory_limit_can_be_taken_away(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FLAGS, "--memory-limit", "none"]) == 0

    assert capsys.readouterr().out == manifest_yaml(spec(memory_limit=None))


def test_the_probe_settings_cannot_be_changed_by_accident() -> None:
    with pytest.raises(TypeError):
        PROBES["livenessProbe"]["httpGet"]["path"] = "/health"  # type: ignore[index]


def test_an_existing_output_keeps_its_permissions(tmp_path: Path) -> None:
    out = tmp_path / "deployment.yaml"
    out.write_text("old\n")
    out.chmod(0o600)

    assert main([*FLAGS, "-o", str(out)]) == 0

    assert (out.stat().st_mode & 0o777, out.read_text()) == (0o600, manifest_yaml(spec()))


def test_a_manifest_from_a_file_names_the_file_to_edit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "name: orders\nimage: i\napp: a:b\n")

    assert main(["k8s", "manifest", "--config", str(path)]) == 0

    assert f"# Edit {path} and regenerate; changes made here are lost.\n" in (
        capsys.readouterr().out)
