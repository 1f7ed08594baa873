"""The security and resource policy holds for every pod template of every overlay.

Every container: runs as non-root, no privilege escalation, read-only root filesystem
(with writable emptyDirs for /tmp and the home directory), all capabilities dropped,
seccomp RuntimeDefault, requests and limits for CPU and memory (and GPUs where the
overlay schedules GPU work). No secrets anywhere: no Secret objects or references, no
credentials in the configuration, identities through Workload Identity instead.
The checker is also run on deliberately broken manifests to show it catches each rule.
"""
from __future__ import annotations

import re

import pytest

from tests.test_k8s_render import OVERLAYS, find, pod_templates, render

GPU = "nvidia.com/gpu"
# Which components need GPUs, per overlay (label app.kubernetes.io/component).
GPU_COMPONENTS = {"local": set(), "gke": {"train", "train-multi", "predict"}}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _effective(container: dict, pod: dict, key: str):
    """A security setting as it applies to the container (container overrides pod)."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def container_violations(where: str, container: dict, pod: dict, needs_gpu: bool) -> list[str]:
    name = f"{where} container {container['name']}"
    found = []
    context = container.get("securityContext") or {}
    if _effective(container, pod, "runAsNonRoot") is not True:
        found.append(f"{name}: runAsNonRoot is not true")
    if _effective(container, pod, "runAsUser") == 0:
        found.append(f"{name}: runs as user 0")
    seccomp = _effective(container, pod, "seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        found.append(f"{name}: seccompProfile is {seccomp.get('type')!r}, not RuntimeDefault")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append(f"{name}: allowPrivilegeEscalation is not false")
    if context.get("privileged"):
        found.append(f"{name}: privileged")
    if context.get("readOnlyRootFilesystem") is not True:
        found.append(f"{name}: readOnlyRootFilesystem is not true")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        found.append(f"{name}: capabilities do not drop ALL")
    if capabilities.get("add"):
        found.append(f"{name}: adds capabilities {capabilities['add']}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in container.get("volumeMounts", [])}
    if "emptyDir" not in mounts.get("/tmp", {}):
        found.append(f"{name}: no writable emptyDir at /tmp (the root filesystem is read-only)")
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for resource in ("cpu", "memory"):
        if resource not in requests:
            found.append(f"{name}: no {resource} request")
        if resource not in limits:
            found.append(f"{name}: no {resource} limit")
        if resource in requests and resource in limits and quantity(requests[resource]) > quantity(limits[resource]):
            found.append(f"{name}: {resource} request above its limit")
    if needs_gpu and quantity(limits.get(GPU, 0)) < 1:
        found.append(f"{name}: no {GPU} limit")
    if not needs_gpu and (GPU in limits or GPU in requests):
        found.append(f"{name}: asks for GPUs where none are scheduled")
    if GPU in requests and requests[GPU] != limits.get(GPU):
        found.append(f"{name}: {GPU} request differs from its limit")
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            found.append(f"{name}: envFrom a Secret")
    for var in container.get("env", []):
        if "secretKeyRef" in (var.get("valueFrom") or {}):
            found.append(f"{name}: env {var['name']} from a Secret")
        if "value" in var and SECRET_NAME.search(var["name"]):
            found.append(f"{name}: env {var['name']} looks like a credential written in the manifest")
        if var["name"] == "GOOGLE_APPLICATION_CREDENTIALS":
            found.append(f"{name}: key file credentials (use Workload Identity)")
    return found


def pod_violations(where: str, template: dict, needs_gpu: bool) -> list[str]:
    pod = template["spec"]
    found = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{where}: {flag}")
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{where}: mounts a service account token it does not need")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            found.append(f"{where}: hostPath volume {volume['name']}")
        if "secret" in volume:
            found.append(f"{where}: Secret volume {volume['name']}")
        for source in (volume.get("projected") or {}).get("sources", []):
            if "secret" in source:
                found.append(f"{where}: projected Secret in volume {volume['name']}")
    for container in pod.get("initContainers", []) + pod["containers"]:
        found += container_violations(where, container, pod, needs_gpu)
    return found


def policy_violations(objects: list[dict], gpu_components: set[str]) -> list[str]:
    """Every breach of the policy in a rendered overlay; empty when it holds."""
    found = []
    for obj in objects:
        if obj["kind"] == "Secret":
            found.append(f"Secret/{obj['metadata']['name']} in the manifests")
        if obj["kind"] == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                if SECRET_NAME.search(key) or "PRIVATE KEY" in str(value):
                    found.append(f"ConfigMap/{obj['metadata']['name']}: {key} looks like a credential")
        if obj["kind"] == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False:
            found.append(f"ServiceAccount/{obj['metadata']['name']}: automounts its token")
    templates = pod_templates(objects)
    if not templates:
        found.append("no pod templates found")
    for where, _, template in templates:
        component = (template.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")
        found += pod_violations(where, template, component in gpu_components)
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_follows_the_security_and_resource_policy(overlay):
    assert policy_violations(render(overlay), GPU_COMPONENTS[overlay]) == []


def test_the_gke_overlay_schedules_gpu_work_on_gpu_nodes():
    objects = render("gke")
    for name in ("tessera-train", "tessera-train-multi", "tessera-predict"):
        pod = find(objects, "Job", name)["spec"]["template"]["spec"]
        assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"], name
        assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"]), name


def test_gke_uses_workload_identity_with_one_google_account_per_job_kind():
    objects = render("gke")
    accounts = {kind: find(objects, "ServiceAccount", f"tessera-{kind}")["metadata"]["annotations"][
        "iam.gke.io/gcp-service-account"] for kind in ("preprocess", "train", "predict")}
    assert all(a.endswith(".iam.gserviceaccount.com") for a in accounts.values())
    assert len(set(accounts.values())) == 3                    # no job kind shares another's identity
    launcher = find(objects, "CronJob", "tessera-preprocess")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    email = next(a for a in launcher["containers"][0]["args"] if a.startswith("--service_account_email="))
    assert email == "--service_account_email=$(GCP_SA_DATAFLOW_WORKER)"   # Dataflow workers: yet another


# component label -> the service account its pods run as
ACCOUNTS = {"preprocess": "tessera-preprocess", "train": "tessera-train", "train-multi": "tessera-train",
            "predict": "tessera-predict"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_job_kind_runs_as_its_own_service_account(overlay):
    for where, _, template in pod_templates(render(overlay)):
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert template["spec"]["serviceAccountName"] == ACCOUNTS[component], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_training_workers_reach_each_others_grpc_port(overlay):
    objects = render(overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]       # nothing else accepts connections
    allowed = [p for p in policies if p["spec"].get("ingress")]
    assert len(allowed) == 1
    (rule,) = allowed[0]["spec"]["ingress"]
    workers = {"app.kubernetes.io/component": "train-multi"}
    assert allowed[0]["spec"]["podSelector"]["matchLabels"] == workers
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [workers]   # from the job's pods only
    job = find(objects, "Job", "tessera-train-multi")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["containerPort"] for p in container["ports"]}
    assert [p["port"] for p in rule["ports"]] == [int(env["TESSERA_WORKER_PORT"])] == sorted(ports)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "train-multi"


def _train_job(overlay="gke"):
    objects = render(overlay)
    return objects, find(objects, "Job", "tessera-train")


def _container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


BREAKAGES = {
    "runAsNonRoot": lambda job: job["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
    "user 0": lambda job: _container(job).setdefault("securityContext", {}).update(runAsUser=0),
    "allowPrivilegeEscalation": lambda job: _container(job)["securityContext"].update(allowPrivilegeEscalation=True),
    "readOnlyRootFilesystem": lambda job: _container(job)["securityContext"].pop("readOnlyRootFilesystem"),
    "drop ALL": lambda job: _container(job)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
    "adds capabilities": lambda job: _container(job)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "seccompProfile": lambda job: _container(job)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "privileged": lambda job: _container(job)["securityContext"].update(privileged=True),
    "/tmp": lambda job: _container(job).update(
        volumeMounts=[m for m in _container(job)["volumeMounts"] if m["mountPath"] != "/tmp"]),
    "cpu limit": lambda job: _container(job)["resources"]["limits"].pop("cpu"),
    "memory request": lambda job: _container(job)["resources"]["requests"].pop("memory"),
    "request above": lambda job: _container(job)["resources"]["requests"].update(memory="1Ti"),
    "nvidia.com/gpu limit": lambda job: [_container(job)["resources"][k].pop(GPU) for k in ("requests", "limits")],
    "hostPath": lambda job: job["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "Secret volume": lambda job: job["spec"]["template"]["spec"]["volumes"].append(
        {"name": "s", "secret": {"secretName": "gcp-key"}}),
    "from a Secret": lambda job: _container(job)["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
    "credential written": lambda job: _container(job)["env"].append({"name": "API_TOKEN", "value": "abc"}),
    "Workload Identity": lambda job: _container(job)["env"].append(
        {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/key.json"}),
    "service account token": lambda job: job["spec"]["template"]["spec"].pop("automountServiceAccountToken"),
    "hostNetwork": lambda job: job["spec"]["template"]["spec"].update(hostNetwork=True),
}


@pytest.mark.parametrize("broken", sorted(BREAKAGES))
def test_the_policy_check_fails_on_a_bad_manifest(broken):
    objects, job = _train_job()
    _container(job).setdefault("env", [])
    BREAKAGES[broken](job)
    violations = policy_violations(objects, GPU_COMPONENTS["gke"])
    assert violations, f"breaking {broken!r} went unnoticed"
    assert any(broken in v for v in violations), violations


def test_the_policy_check_fails_on_a_secret_object_and_on_gpus_where_none_belong():
    objects = render("local") + [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}, "data": {}}]
    find(objects, "Job", "tessera-predict")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] = 1
    violations = policy_violations(objects, GPU_COMPONENTS["local"])
    assert any("Secret/k" in v for v in violations)
    assert any("asks for GPUs" in v for v in violations)


def test_quantity_parses_kubernetes_units():
    assert quantity("500m") == 0.5 and quantity(2) == 2 and quantity("4Gi") == 4 * 2**30
    with pytest.raises(ValueError):
        quantity("4 GB")
