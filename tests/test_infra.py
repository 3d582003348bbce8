"""The scale-out files are checked like a linter would (no Docker or cluster here): a JSON schema for the part of the
Compose spec we use plus the cross-references Compose and Kubernetes resolve at deploy time (volumes, services,
ConfigMaps, claims, selectors, named ports), GPU requests where GPU work runs, loopback-only ports, no credentials
in the files, and every `{{ placeholder }}` of the Prefect job template declared as a variable."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from flows.services import CPU_POOL, GPU_POOL
from tests.project import REPO

INFRA = REPO / "infra"
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "name": {"type": "string"},
        "services": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
                "additionalProperties": False,
                "properties": {
                    "image": {"type": "string"},
                    "build": {
                        "type": "object",
                        "required": ["context"],
                        "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}, "args": {}},
                    },
                    "command": {"type": "array", "items": {"type": "string"}},
                    "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                    "ports": {"type": "array", "items": {"type": "string", "pattern": r"^127\.0\.0\.1:\d+:\d+$"}},
                    "volumes": {"type": "array", "items": {"type": "string", "pattern": r"^[\w.-]+:/[\w/.-]+$"}},
                    "depends_on": {"type": ["array", "object"]},
                    "healthcheck": {"type": "object", "required": ["test"]},
                    "deploy": {"type": "object"},
                },
            },
        },
        "volumes": {"type": "object"},
    },
}
KNOWN_KINDS = {
    ("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"), ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_file_is_valid_and_consistent(compose):
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services, volumes = compose["services"], set(compose["volumes"])
    built = {s["image"] for s in services.values() if "build" in s and "image" in s}
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.startswith("flywheel:") or image in built, f"{name}: {image} is built by no service"
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} not pinned to a version"
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), f"{name}: depends on an unknown service"
        assert {v.split(":")[0] for v in service.get("volumes", [])} <= volumes, f"{name}: undeclared volume"
        for key, value in service.get("environment", {}).items():
            if "PASSWORD" in key or "postgres" in value:
                assert "${" in value or "@" not in value, f"{name}.{key}: a credential written in the file"
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    commands = [s.get("command", []) for s in services.values()]
    pools = {command[command.index("--pool") + 1] for command in commands if "--pool" in command}
    assert pools == {CPU_POOL, GPU_POOL}
    assert set(re.findall(r"\$\{(\w+)", (INFRA / "compose.yaml").read_text())) == {
        "PREFECT_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
    }


def test_dockerfile_copies_what_exists():
    sources = re.findall(r"^COPY (.+) \S+$", (INFRA / "Dockerfile").read_text(), flags=re.M)
    paths = [p for line in sources for p in line.split()]
    assert paths and all((REPO / p).exists() for p in paths), paths


def _k8s_documents() -> list[dict]:
    docs = [d for path in sorted((INFRA / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS, (doc["apiVersion"], doc["kind"])
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "flywheel"
    return docs


def _pod_specs(docs: list[dict]):
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] == "Deployment"]


def test_kubernetes_manifests_resolve_their_references():
    docs = _k8s_documents()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name, template in _pod_specs(docs):
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        spec = template["spec"]
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in spec["containers"]:
            assert container["image"] and container["resources"]["limits"]["memory"]
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
            refs += [e["valueFrom"]["configMapKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e]
            assert all(("ConfigMap", ref) in names for ref in refs)
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}
    for service in (d for d in docs if d["kind"] == "Service"):
        matching = [
            t for _, t in _pod_specs(docs) if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert matching, f"service {service['metadata']['name']} selects no pods"
        ports = {p["name"] for t in matching for c in t["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_vllm_runs_on_a_gpu():
    (vllm,) = [t for name, t in _pod_specs(_k8s_documents()) if name == "vllm"]
    resources = vllm["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_gpu_pool_job_template_declares_every_placeholder():
    template = json.loads((INFRA / "k8s" / "gpu-pool-base-job-template.json").read_text())
    variables = template["variables"]["properties"]
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used == set(variables), used ^ set(variables)
    defaults = {k: v["default"] for k, v in variables.items() if "default" in v}
    jsonschema.validate(defaults, {**template["variables"], "required": []})
    manifest = template["job_configuration"]["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
