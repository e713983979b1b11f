"""deploy/k8s: every overlay renders, every manifest validates against the Kubernetes schemas
(kubernetes-validate, offline, strict: an unknown field fails) and the ScaledObject against
KEDA's CRD schema, and the settings that must agree with the pipeline do."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamproc.config import PipelineConfig

from .kustomize import render

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ["overlays/cpu", "overlays/gpu", "autoscaling/hpa", "autoscaling/keda"]
KUBERNETES = "1.30.0"  # the oldest release the manifests promise to work on


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as ``kubectl --validate=strict`` does
    (the API server would drop them silently)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def scaledobject_schema() -> dict[str, Any]:
    crd = yaml.safe_load((K8S / "schemas" / "keda.sh_scaledobjects.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates(overlay: str) -> None:
    docs = render(K8S / overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, scaledobject_schema())
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_an_unknown_field_fails_validation() -> None:
    docs = render(K8S / "overlays" / "cpu")
    sts = copy.deepcopy(by_kind(docs, "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES, strict=True)
    so = copy.deepcopy(by_kind(docs, "ScaledObject"))
    so["spec"]["maxReplicas"] = 4  # the HPA's name for it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, scaledobject_schema())


def pipeline(docs: list[dict[str, Any]]) -> PipelineConfig:
    raw = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["fraud.yaml"])
    return PipelineConfig.model_validate(raw)


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_the_manifests_agree_with_the_pipeline(overlay: str) -> None:
    docs = render(K8S / overlay)
    cfg = pipeline(docs)
    sts = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # The replica's instance is its pod name, from the downward API.
    assert c["args"][c["args"].index("--instance") + 1] == "$(POD_NAME)"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["STREAMPROC_METRICS_HOST"]["value"] == "0.0.0.0"
    # Probes on the metrics port the pipeline serves.
    (port,) = c["ports"]
    assert port["containerPort"] == cfg.metrics.port == 9464
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert c["readinessProbe"]["timeoutSeconds"] > cfg.registry.request_timeout_s
    # The grace period covers the preStop, the batch's flush and the final flush.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    worst = float(pre_stop[1]) + 2 * cfg.delivery.flush_timeout_s
    assert pod["terminationGracePeriodSeconds"] > worst
    # Autoscaling never past the input's partitions, on the pipeline's own group and topic.
    so = by_kind(docs, "ScaledObject")
    assert so["spec"]["maxReplicaCount"] == cfg.topics.partitions
    assert so["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == cfg.group_id
    assert trigger["metadata"]["topic"] == cfg.topics.input
    hpa = by_kind(render(K8S / "autoscaling" / "hpa"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == cfg.topics.partitions
    assert hpa["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"]
    # Requests and limits everywhere; a GPU (and the GPU image) only in the gpu overlay.
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
    gpu = overlay.endswith("gpu")
    assert ("nvidia.com/gpu" in res["limits"]) == gpu
    assert c["image"].split(":")[0].endswith("-gpu") == gpu
    # The disruption budget and the service select the StatefulSet's pods.
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert by_kind(docs, "Service")["spec"]["selector"] == labels
    secret = by_kind(docs, "Secret")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in c["envFrom"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the project's machines ship it; CI must not lose this check
        msg = "no `kubectl` (its `kustomize` is the reference renderer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test: {msg}")
        pytest.skip(msg)
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip

    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    assert sorted(render(K8S / overlay), key=key) == theirs
