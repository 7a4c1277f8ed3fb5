"""deploy/ checked by real tools: hadolint, the Compose spec, kubeconform, promtool.

The tools come from `make tools` (deploy/tools.sh) and the `test` extra; a missing one fails
the test with the command that installs it, never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
TOOLS = REPO / ".tools"


def tool(name: str) -> str:
    for candidate in (TOOLS / "bin" / name, Path(sys.executable).parent / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is not installed: run `make tools` (deploy/tools.sh)"
    return found


def schemas(name: str) -> Path:
    path = TOOLS / "schemas" / name
    assert path.exists(), f"{path} is missing: run `make tools` (deploy/tools.sh)"
    return path


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- container -------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", DEPLOY / "docker" / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install .\nENTRYPOINT sentistream worker\n")
    result = run(tool("hadolint"), "--no-color", bad)
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout


def test_dockerfile_is_non_root_with_a_readiness_healthcheck() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "USER 10001" in final_stage
    assert "/readyz" in final_stage.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["sentistream", "worker"]' in final_stage  # exec form: SIGTERM reaches the worker
    assert not [line for line in text.splitlines() if "torch" in line and not line.startswith("#")]


# -- compose ---------------------------------------------------------------------------------
def test_compose_file_follows_the_compose_spec() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    spec = json.loads((schemas("compose-spec") / "schema" / "compose-spec.json").read_text())
    jsonschema.validate(compose, spec)

    services = compose["services"]
    assert {"kafka", "topics", "worker", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    for name, service in services.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), f"{name} depends on an undefined service"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / "docker" / source).resolve().exists(), f"{name} mounts a missing {source}"
    build = services["topics"]["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve().exists()


def test_compose_spec_catches_a_bad_file() -> None:
    spec = json.loads((schemas("compose-spec") / "schema" / "compose-spec.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"worker": {"image": "x", "stop_grace_period": ["60s"]}}}, spec)


# -- Kubernetes ------------------------------------------------------------------------------
def _strict(schema: object) -> object:
    """Like kubeconform's own CRD converter in strict mode: closed objects, unless the CRD says open."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KEDA's and the Prometheus Operator's CRDs as JSON schemas, laid out for kubeconform."""
    out = tmp_path_factory.mktemp("crd-schemas")
    crds = [schemas("keda") / "config/crd/bases/keda.sh_scaledobjects.yaml",
            schemas("keda") / "config/crd/bases/keda.sh_triggerauthentications.yaml",
            schemas("prometheus-operator") / "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"]
    for path in crds:
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            target = out / group / f"{kind}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(_strict(version["schema"]["openAPIV3Schema"])))
    return out


K8S_VERSION = "v1.33.0"


@pytest.fixture(scope="module")
def k8s_schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Kubernetes API's strict JSON schemas (from kubernetes-validate's package), with their
    shared definitions referenced by file URL so that kubeconform can follow them offline."""
    import kubernetes_validate

    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"{K8S_VERSION}-local-strict"
    assert source.is_dir(), f"no Kubernetes {K8S_VERSION} schemas at {source}"
    out = tmp_path_factory.mktemp("k8s-schemas")
    for path in source.glob("*.json"):
        text = path.read_text().replace('"/api/_definitions.json#', f'"{(out / "_definitions.json").as_uri()}#')
        (out / path.name).write_text(text)
    return out


def kubeconform(k8s: Path, crds: Path, *paths: Path) -> subprocess.CompletedProcess:
    return run(tool("kubeconform"), "-strict", "-summary", "-output", "text",
               "-ignore-filename-pattern", "kustomization.yaml",
               "-schema-location", f"{k8s}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
               "-schema-location", f"{crds}/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
               *paths)


def test_kubernetes_manifests_validate_against_the_schemas(k8s_schemas: Path, crd_schemas: Path) -> None:
    result = kubeconform(k8s_schemas, crd_schemas, DEPLOY / "k8s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid: 9, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_kubeconform_catches_a_misspelt_field_and_a_bad_scaledobject(k8s_schemas: Path, crd_schemas: Path,
                                                                     tmp_path: Path) -> None:
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text().replace("terminationGracePeriodSeconds",
                                                                          "terminationGracePeriod")
    scaled = (DEPLOY / "k8s" / "scaledobject.yaml").read_text().replace("maxReplicaCount: 8", "maxReplicaCount: many")
    # a secretTargetRef without its (required) key
    auth = (DEPLOY / "k8s" / "triggerauthentication.yaml").read_text().replace(", key: KEDA_KAFKA_TLS", "")
    (tmp_path / "deployment.yaml").write_text(deployment)
    (tmp_path / "scaledobject.yaml").write_text(scaled)
    (tmp_path / "triggerauthentication.yaml").write_text(auth)
    result = kubeconform(k8s_schemas, crd_schemas, tmp_path)
    assert result.returncode != 0
    assert "Invalid: 3" in result.stdout, result.stdout


def test_kubernetes_settings_agree_with_each_other() -> None:
    docs = {p.name: yaml.safe_load(p.read_text()) for p in (DEPLOY / "k8s").glob("*.yaml")}
    listed = set(docs.pop("kustomization.yaml")["resources"])
    assert listed == set(docs), "kustomization.yaml must list every manifest"
    config = docs["configmap.yaml"]["data"]
    scaled = docs["scaledobject.yaml"]["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert scaled["maxReplicaCount"] <= int(config["SENTISTREAM_PARTITIONS"]), "more replicas than partitions idle"
    assert trigger["consumerGroup"] == config["SENTISTREAM_GROUP_ID"]
    assert trigger["topic"] == config["SENTISTREAM_INPUT_TOPIC"]
    assert trigger["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    probes = pod["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def test_keda_logs_in_with_the_workers_secret() -> None:
    """KEDA's lag scaler reads sasl/username/password/tls/ca from the Secret the workers load, and
    what the Secret tells KEDA agrees with what it tells the workers."""
    docs = {p.name: yaml.safe_load(p.read_text()) for p in (DEPLOY / "k8s").glob("*.yaml")}
    secret, auth = docs["secret.yaml"], docs["triggerauthentication.yaml"]
    trigger = docs["scaledobject.yaml"]["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["metadata"]["namespace"] == docs["scaledobject.yaml"]["metadata"]["namespace"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"sasl", "username", "password", "tls", "ca"}
    data = secret["stringData"]
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in data, ref
    # the same login for both: KEDA's user and password are the worker's own settings
    assert refs["username"]["key"] == "SENTISTREAM_SASL_USERNAME"
    assert refs["password"]["key"] == "SENTISTREAM_SASL_PASSWORD"
    protocol = data["SENTISTREAM_SECURITY_PROTOCOL"]
    sasl = KEDA_SASL[data["SENTISTREAM_SASL_MECHANISM"]] if protocol.startswith("SASL") else "none"
    assert data[refs["sasl"]["key"]] == sasl
    assert data[refs["tls"]["key"]] == ("enable" if protocol.endswith("SSL") else "disable")
    # the workers read the same CA as a file
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
    assert [i["key"] for i in volume["secret"]["items"]] == [refs["ca"]["key"]]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    cafile = f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert cafile in (DEPLOY / "k8s" / "secret.yaml").read_text()  # the SENTISTREAM_SSL_CAFILE the comments give


# -- Prometheus ------------------------------------------------------------------------------
def test_prometheus_rules_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", DEPLOY / "prometheus" / "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rules_pass_their_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=DEPLOY / "prometheus")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_compose_prometheus_config_passes_promtool_check() -> None:
    result = run(tool("promtool"), "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
