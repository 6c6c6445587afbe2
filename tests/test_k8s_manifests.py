"""The Kubernetes and KServe manifests, checked against the app they deploy.

No cluster runs here, so this is what can be checked without one: every file parses, the
probes hit routes the app really serves (and they answer 200), the ports agree from the
server's command line through the container to the Service and the probes, the GPU is asked
for, the store is read-only, the settings in `env` exist and parse, and the commands the
containers run parse with our CLI (the graph derivation even runs, on a tiny store).
"""

from __future__ import annotations

import copy
import re
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from service import cli
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_card, tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> document, over deploy/k8s and deploy/kserve (one of each kind)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for path in [*sorted(K8S.glob("*.yaml")), KSERVE]:
        for doc in load(path):
            if doc["kind"] == "Kustomization":
                continue
            assert doc["kind"] not in by_kind, f"two {doc['kind']}s"
            by_kind[doc["kind"]] = doc
    return by_kind


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def served_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """GET routes of the real app that answer 200 on an empty store."""
    app = create_app(Settings(store=tmp_path_factory.mktemp("store")))
    paths = {p for p, ops in app.openapi()["paths"].items() if "get" in ops and "{" not in p}
    with TestClient(app) as client:
        return {p for p in paths if client.get(p).status_code == 200}


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by name or by number, as a port the container declares."""
    for declared in container["ports"]:
        if port in (declared.get("name"), declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not declared by container {container['name']}")


def serve_port(command: list[str]) -> int:
    words = shlex.split(" ".join(command))
    return int(words[words.index("--port") + 1])


def check_probes(container: dict[str, Any], served: set[str]) -> set[str]:
    port = int(container["ports"][0]["containerPort"])
    seen = set()
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        get = probe["httpGet"]
        assert get["path"] in served, f"{kind} {get['path']} is not a route that answers 200"
        assert container_port(container, get["port"]) == port
        seen.add(kind)
    assert {"livenessProbe", "readinessProbe"} <= seen
    return {container[k]["httpGet"]["path"] for k in seen}


def check_env(env: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {e["name"]: e["value"] for e in env if "value" in e}
    for entry in env:
        name = entry["name"]
        assert name.startswith("CNNVIS_"), name
        assert name[7:].lower() in Settings.model_fields, f"{name} is not a setting"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    Settings()  # every value parses
    return values


def test_every_file_parses_and_kustomize_lists_them() -> None:
    files = sorted(K8S.glob("*.yaml"))
    for path in [*files, KSERVE]:
        if path.name == "kustomization.yaml":
            continue
        for doc in load(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            assert doc["metadata"]["name"], path.name
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in files} - {"kustomization.yaml"}


def test_deployment(
    docs: dict[str, dict[str, Any]], served_paths: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = docs["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (server,) = pod["spec"]["containers"]

    # ports: the server's --port, the container port, the probes, Prometheus' scrape port
    port = serve_port(server["args"])
    assert port == container_port(server, "http") == 8000
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert pod["metadata"]["annotations"]["prometheus.io/path"] in served_paths
    assert check_probes(server, served_paths) == {"/healthz", "/readyz"}
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # one GPU, and a CPU request for the HPA's utilization target to mean something
    assert int(server["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert server["resources"]["requests"]["cpu"]

    # the store: a read-only PVC, copied and derived by the init container
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert claim["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    (init,) = pod["spec"]["initContainers"]
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert "cnnvis --store /store models build --all" in init["args"][0]
    assert {m["mountPath"] for m in server["volumeMounts"]} >= {"/store"}
    assert not any(m["name"] == "models" for m in server["volumeMounts"])

    values = check_env(server["env"], monkeypatch)
    assert values["CNNVIS_READ_ONLY_STORE"] == "true"
    check_env(init["env"], monkeypatch)

    # SIGKILL comes only after the preStop pause and the whole drain
    pause = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(values["CNNVIS_SHUTDOWN_GRACE_S"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + pause


def test_service_and_hpa(docs: dict[str, dict[str, Any]]) -> None:
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert container_port(server, port["targetPort"]) == serve_port(server["args"])

    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_kserve(
    docs: dict[str, dict[str, Any]], served_paths: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, isvc = docs["ServingRuntime"], docs["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"] == f"pvc://{docs['PersistentVolumeClaim']['metadata']['name']}/"
    assert int(model["resources"]["limits"]["nvidia.com/gpu"]) == 1

    (server,) = runtime["spec"]["containers"]
    assert server["name"] == "kserve-container"
    script = server["args"][0]
    exec_line = next(line for line in script.splitlines() if line.strip().startswith("exec "))
    assert serve_port(exec_line.split()) == int(server["ports"][0]["containerPort"]) == 8000
    assert "cnnvis --store /store models build --all" in script
    check_probes(server, served_paths)
    check_env(server["env"], monkeypatch)
    grace = float({e["name"]: e["value"] for e in server["env"]}["CNNVIS_SHUTDOWN_GRACE_S"])
    assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > grace


def cnnvis_lines(docs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Every `cnnvis ...` command the manifests run, as argv without the program name."""
    deployment = docs["Deployment"]["spec"]["template"]["spec"]
    scripts = [c["args"][0] for c in deployment["initContainers"]]
    scripts += [c["args"][0] for c in docs["ServingRuntime"]["spec"]["containers"]]
    lines = [re.sub(r"^exec\s+", "", line.strip()) for s in scripts for line in s.splitlines()]
    argvs = [shlex.split(line)[1:] for line in lines if line.startswith("cnnvis ")]
    argvs += [c["args"] for c in deployment["containers"]]  # the image's entrypoint is cnnvis
    return argvs


def test_the_commands_parse_and_the_build_runs(
    docs: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    ModelStore(store).add(tiny_classifier(), tiny_card())
    served: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(kw))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    argvs = cnnvis_lines(docs)
    assert len(argvs) == 4  # init build, runtime build, runtime serve, deployment serve
    for argv in argvs:
        assert argv[:2] == ["--store", "/store"], argv
        assert cli.main(["--store", str(store), *argv[2:]]) == 0, argv
    assert [(kw["host"], kw["port"]) for kw in served] == [("0.0.0.0", 8000)] * 2
    assert any((store / "tiny" / "1" / "derived").iterdir())


# the oldest Kubernetes release still in upstream support when these manifests were written
# and the newest the schemas know: the manifests must be valid on both
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(docs: dict[str, Any], version: str) -> None:
    """Each core manifest against the API server's own OpenAPI schema, strict: an unknown or
    misspelt field is an error, as `kubectl apply --validate=strict` would make it."""
    import kubernetes_validate

    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"):
        kubernetes_validate.validate(docs[kind], version, strict=True)
    broken = copy.deepcopy(docs["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_covers_every_manifest() -> None:
    """What `kubectl apply -k` renders: every manifest file, the shared label, the image."""
    (kustomization,) = load(K8S / "kustomization.yaml")
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert kustomization["labels"] == [{"pairs": {"app.kubernetes.io/part-of": "cnnvis"}}]
    containers = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {i["name"] for i in kustomization["images"]} == {
        c["image"].split(":")[0] for c in containers
    }
