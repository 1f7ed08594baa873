"""Every kustomize overlay renders, and every rendered object is valid Kubernetes.

Also the helpers the other ``test_k8s_*`` files share: rendering, finding pod templates,
and resolving a container's environment and ``$(VAR)`` references the way the kubelet does.
"""
from __future__ import annotations

import copy
import functools
import pathlib
import re
import subprocess

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("local", "gke")
CONFIG_NAME = "tessera-config"
# kubernetes-validate ships schemas up to this release; it must be a current Kubernetes.
K8S_VERSION = kubernetes_validate.utils.latest_version()


@functools.lru_cache(maxsize=None)
def _render_text(path: str) -> str:
    done = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


def render(overlay: str) -> list[dict]:
    """The objects of ``k8s/overlays/<overlay>`` (or ``base``), freshly copied for the caller."""
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    return [doc for doc in yaml.safe_load_all(_render_text(str(path))) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def job_spec(obj: dict) -> dict | None:
    """The Job spec of a Job or of a CronJob's job template; None for other kinds."""
    if obj["kind"] == "Job":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]
    return None


POD_TEMPLATE_PATHS = {
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Pod": (),
}


def pod_templates(objects: list[dict]) -> list[tuple[str, dict, dict]]:
    """(kind/name, owning object, pod template {metadata, spec}) for every object with pods."""
    found = []
    for obj in objects:
        path = POD_TEMPLATE_PATHS.get(obj["kind"])
        if path is None:
            continue
        template = obj
        for key in path:
            template = template[key]
        found.append((f"{obj['kind']}/{obj['metadata']['name']}", obj, template))
    return found


def config_map(objects: list[dict], name: str) -> dict:
    """The data of the ConfigMap a pod refers to as ``name`` (kustomize adds a hash suffix)."""
    matches = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"ConfigMap {name} is referenced but not rendered"
    return dict(matches[0].get("data", {}))


def the_config(objects: list[dict]) -> dict:
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(CONFIG_NAME)]
    assert len(maps) == 1, "exactly one tessera-config ConfigMap"
    return dict(maps[0]["data"])


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(substitute, text)


def unresolved(text: str) -> list[str]:
    return [m.group(1) for m in _REFERENCE.finditer(text) if m.group(1)]


def field_ref(obj: dict, template: dict, path: str, index: int) -> str:
    """The downward-API value a pod of ``obj`` with completion ``index`` would see."""
    namespace = obj["metadata"].get("namespace", "default")
    job_name = obj["metadata"]["name"]
    known = {
        "metadata.namespace": namespace,
        "metadata.name": f"{job_name}-{index}-abcde",
        "metadata.labels['batch.kubernetes.io/job-name']": job_name,
        "metadata.labels['job-name']": job_name,
        "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
        "metadata.labels['batch.kubernetes.io/job-completion-index']": str(index),
    }
    for key, value in (template.get("metadata", {}).get("labels") or {}).items():
        known[f"metadata.labels['{key}']"] = value
    assert path in known, f"{job_name}: downward API field {path!r} is not one the test knows"
    return known[path]


def container_env(objects: list[dict], obj: dict, template: dict, container: dict, index: int = 0) -> dict[str, str]:
    """The environment the kubelet gives ``container`` of pod ``index`` (without image ENV)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom other than a ConfigMap: {source}"
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in config_map(objects, source["configMapRef"]["name"]).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = config_map(objects, ref["name"])[ref["key"]]
        elif "fieldRef" in source:
            env[var["name"]] = field_ref(obj, template, source["fieldRef"]["fieldPath"], index)
        else:
            raise AssertionError(f"env {var['name']}: unsupported source {source}")
    spec = job_spec(obj)
    if spec and spec.get("completionMode") == "Indexed":
        env.setdefault("JOB_COMPLETION_INDEX", str(index))  # the Job controller adds it
    return env


def resolved_args(objects: list[dict], obj: dict, template: dict, container: dict, index: int = 0) -> list[str]:
    env = container_env(objects, obj, template, container, index)
    return [expand(str(a), env) for a in container.get("command", []) + container.get("args", [])]


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("overlay", ("base",) + OVERLAYS)
def test_overlay_renders_the_jobs(overlay):
    objects = render(overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [("CronJob", "tessera-preprocess"), ("Job", "tessera-train"), ("Job", "tessera-train-multi"),
                     ("Service", "tessera-train-workers"), ("Job", "tessera-predict"),
                     ("ServiceAccount", "tessera-preprocess"), ("ServiceAccount", "tessera-train"),
                     ("ServiceAccount", "tessera-predict"), ("NetworkPolicy", "tessera-deny-ingress"),
                     ("NetworkPolicy", "tessera-train-workers"), ("PersistentVolumeClaim", "tessera-data")]:
        assert expected in kinds, f"{overlay}: {expected} missing"
    assert sum(o["kind"] == "ConfigMap" for o in objects) == 1


def test_validator_version_is_a_current_kubernetes():
    assert Version(K8S_VERSION) >= Version("1.34"), K8S_VERSION


@pytest.mark.parametrize("overlay", ("base",) + OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    for obj in render(overlay):
        # strict: unknown fields (a typo such as `securityContxt`) are errors too
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_schema_validation_catches_a_misspelt_field():
    job = copy.deepcopy(find(render("local"), "Job", "tessera-train"))
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {"runAsNonRoot": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_inside_the_overlay_resolve(overlay):
    objects = render(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for where, _, template in pod_templates(objects):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount of undefined volume {mount['name']}"
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, where
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, where
        assert ("ServiceAccount", spec.get("serviceAccountName", "default")) in names, where


def test_expand_follows_kubernetes_rules():
    env = {"A": "x", "B": "$(A)"}
    assert expand("--a=$(A)/$(B)", env) == "--a=x/$(A)"  # no recursive expansion
    assert expand("$$(A) $(MISSING)", env) == "$(A) $(MISSING)"
    assert unresolved("--x=$(MISSING)/y") == ["MISSING"]
