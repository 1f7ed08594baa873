"""What each job promises, read from the rendered manifests of every overlay.

Scheduled preprocessing never overlaps itself; preemption is retried while bugs fail
fast; the multi-node workers find each other (TF_CONFIG from the completion index, the
headless Service, the port); training resumes from a backup on shared storage; pod i of
the prediction Job predicts shard i of N into the shared output folder.
"""
from __future__ import annotations

import zoneinfo

import pytest

from pipelines.predict import inputs
from schemas import layout as names
from tessera import cli
from tests.test_k8s_render import (
    OVERLAYS,
    container_env,
    expand,
    find,
    job_spec,
    pod_templates,
    render,
    resolved_args,
    the_config,
)
from trainer import cluster


def rules(spec: dict) -> list[dict]:
    return spec["podFailurePolicy"]["rules"]


def action_for_exit_code(spec: dict, container: str, code: int) -> str | None:
    """The podFailurePolicy action for a container exiting with ``code`` (first match wins)."""
    for rule in rules(spec):
        on = rule.get("onExitCodes")
        if on and on.get("containerName", container) == container:
            hit = code in on["values"]
            if hit == (on["operator"] == "In"):
                return rule["action"]
    return None


def action_for_disruption(spec: dict) -> str | None:
    for rule in rules(spec):
        if any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions", [])):
            return rule["action"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduled_preprocessing_never_overlaps_and_keeps_history(overlay):
    cron = find(render(overlay), "CronJob", "tessera-preprocess")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert 0 < cron["startingDeadlineSeconds"] <= 24 * 3600
    assert cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    zoneinfo.ZoneInfo(cron["timeZone"])  # a real IANA zone
    assert len(cron["schedule"].split()) == 5
    args = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--overwrite" in args, "a scheduled run must be able to replace the previous dataset"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_job_retries_preemption_and_fails_fast_on_bugs(overlay):
    for where, obj, template in pod_templates(render(overlay)):
        spec = job_spec(obj)
        assert template["spec"]["restartPolicy"] == "Never", where  # required by podFailurePolicy
        assert spec["activeDeadlineSeconds"] > 0, where  # bounds retries that do not count
        assert action_for_disruption(spec) == "Ignore", where
        container = template["spec"]["containers"][0]["name"]
        assert action_for_exit_code(spec, container, 2) == "FailJob", f"{where}: bad flags must fail the Job"
        assert action_for_exit_code(spec, container, 137) is None, f"{where}: OOM kills count against the limit"
        if "train" in obj["metadata"]["name"] or where.startswith("CronJob"):
            assert action_for_exit_code(spec, container, 1) == "FailJob", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multi_node_workers_find_each_other(overlay):
    objects = render(overlay)
    job = find(objects, "Job", "tessera-train-multi")
    service = find(objects, "Service", "tessera-train-workers")
    spec, template = job["spec"], job["spec"]["template"]
    replicas = spec["completions"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == replicas >= 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    labels = template["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container = template["spec"]["containers"][0]
    port = service["spec"]["ports"][0]["port"]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert action_for_exit_code(spec, container["name"], cluster.PEER_LOST_EXIT_CODE) == "Ignore"

    configs = [cluster.tf_config_from_env(container_env(objects, job, template, container, i)) for i in range(replicas)]
    namespace = job["metadata"]["namespace"]
    expected = [f"tessera-train-multi-{i}.tessera-train-workers.{namespace}.svc:{port}" for i in range(replicas)]
    for index, config in enumerate(configs):
        assert config == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": index}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_resumes_from_a_backup_on_the_shared_storage(overlay):
    objects = render(overlay)
    for name in ("tessera-train", "tessera-train-multi"):
        job = find(objects, "Job", name)
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        args = resolved_args(objects, job, template, container)
        parsed, _ = cli.job_module("train").build_parser().parse_known_args(args[1:])
        backup = getattr(parsed, "backup_dir")
        mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["data"]
        assert backup.startswith(mount + "/"), f"{name}: backup {backup} is not on the data volume"
        volume = {v["name"]: v for v in template["spec"]["volumes"]}["data"]
        claim = find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if name == "tessera-train-multi" and overlay == "gke":
            assert "ReadWriteMany" in claim["spec"]["accessModes"], "workers on several nodes share it"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prediction_pod_i_predicts_shard_i_into_one_output(overlay):
    objects = render(overlay)
    job = find(objects, "Job", "tessera-predict")
    spec, template = job["spec"], job["spec"]["template"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
    container = template["spec"]["containers"][0]
    parser = cli.job_module("predict").build_parser()
    shards = spec["completions"]
    parsed = [parser.parse_known_args(resolved_args(objects, job, template, container, i)[1:])[0]
              for i in range(shards)]
    assert [p.shard_index for p in parsed] == list(range(shards))
    assert {p.num_shards for p in parsed} == {shards}
    assert len({p.output for p in parsed}) == 1 and len({p.input for p in parsed}) == 1
    ids = [f"image-{n}" for n in range(200)]
    owners = [[p.shard_index for p in parsed if inputs.in_shard(i, p.num_shards, p.shard_index)] for i in ids]
    assert all(len(o) == 1 for o in owners), "every image is predicted by exactly one pod"
    assert {o[0] for o in owners} == set(range(shards)), "no pod is idle"


def test_the_prediction_pods_commands_predict_every_image_once_and_merge(tmp_path, capsys):
    """Run the local overlay's prediction pods' exact commands (storage mounted at tmp_path)."""
    import json

    import pyarrow.parquet as pq

    from tessera.toy_models import export_model, write_images

    objects = render("local")
    job = find(objects, "Job", "tessera-predict")
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    pods = []
    for index in range(job["spec"]["completions"]):
        env = container_env(objects, job, template, container, index)
        env["STORAGE_MOUNT"] = str(tmp_path)  # where the PVC would be mounted
        pods.append([expand(a, env) for a in container["args"]])
    config = the_config(objects)
    export_model(f"{tmp_path}/{config['MODEL_SUBDIR']}", kind="same", core=8, margin=4, layers=2)
    ids = [f"img{n}" for n in range(10)] + ["nested/img10"]
    write_images(f"{tmp_path}/{config['PREDICT_INPUT_SUBDIR']}", {i: (9 + len(i), 13) for i in ids})

    for args in pods:
        assert args[0] == "predict"
        assert cli.main(args) == 0
    output = f"{tmp_path}/{config['PREDICT_OUTPUT_SUBDIR']}"
    shards = len(pods)
    per_shard = [pq.read_table(f"{output}/{names.predictions_file(names.shard_suffix(shards, i))}").column("image_id").to_pylist()
                 for i in range(shards)]
    assert sorted(sum(per_shard, [])) == sorted(ids), "every image predicted by exactly one pod"
    assert sorted(pq.read_table(f"{output}/{names.PREDICTIONS_FILE}").column("image_id").to_pylist()) == sorted(ids)
    assert json.loads(open(f"{output}/{names.SUCCESS_FILE}").read())["predicted"] == len(ids)

    capsys.readouterr()
    assert cli.main(pods[0]) == 0  # a retried pod redoes nothing
    assert f"0 predicted, {len(per_shard[0])} already done" in capsys.readouterr().out
