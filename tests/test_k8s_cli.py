"""Every container in every overlay runs a command the real ``tessera`` CLI accepts.

The image's ENTRYPOINT is ``tessera``, so a container's args are ``<command> <flags>``.
The flags are resolved the way the kubelet resolves them (``$(VAR)`` from the ConfigMap
and the container's env), then parsed by the command's own parser. Beam jobs pass the
flags they do not know to Beam, so those must all be Beam pipeline options (a typo such
as ``--temp_locaton`` fails here, not on the cluster). Training flags are also checked
for their values by the trainer's own config validation.
"""
from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from tessera import cli
from tests.test_k8s_render import (
    OVERLAYS,
    container_env,
    expand,
    pod_templates,
    render,
    resolved_args,
    the_config,
    unresolved,
)

BEAM_COMMANDS = {"preprocess", "predict"}


def tessera_containers(overlay: str):
    objects = render(overlay)
    for where, obj, template in pod_templates(objects):
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            yield objects, where, obj, template, container


def unknown_beam_options(flags: list[str]) -> list[str]:
    """The flags no registered Beam PipelineOptions class defines."""
    from apache_beam.options.pipeline_options import PipelineOptions

    captured: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    _, unknown = captured[0].parse_known_args(flags)
    return unknown


def parse(command: str, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.job_module(command).build_parser()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return parser.parse_known_args(args)
        except SystemExit:
            raise AssertionError(f"tessera {command} rejects {args}:\n{stderr.getvalue()}") from None


def check_container(objects, where, obj, template, container, index=0) -> str:
    assert not container.get("command"), f"{where}: command overrides the image's ENTRYPOINT (tessera)"
    args = resolved_args(objects, obj, template, container, index)
    for arg in args:
        assert not unresolved(arg), f"{where}: {arg!r} refers to an undefined variable"
    command, flags = args[0], args[1:]
    assert command in cli.COMMANDS, f"{where}: unknown tessera command {command!r}"
    _, rest = parse(command, flags)
    if command in BEAM_COMMANDS:
        assert not unknown_beam_options(rest), f"{where}: neither tessera nor Beam options: {unknown_beam_options(rest)}"
    else:
        assert not rest, f"{where}: tessera {command} does not know {rest}"
    if command == "train":
        from trainer.config import parse_config

        parse_config(flags, env={})  # raises ValueError on a bad value (model, loss, ...)
    return command


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_a_command_the_cli_accepts(overlay):
    commands = [check_container(*found) for found in tessera_containers(overlay)]
    assert sorted(commands) == ["predict", "preprocess", "train", "train"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tessera_flags_take_their_values_from_the_config_map(overlay):
    """Paths, geometry and model settings are written once, in the ConfigMap."""
    for objects, where, obj, template, container in tessera_containers(overlay):
        command = container["args"][0]
        own = {o for action in cli.job_module(command).build_parser()._actions for o in action.option_strings}
        for arg in container["args"][1:]:
            flag, has_value, value = arg.partition("=")
            if flag in own and has_value:
                assert "$(" in value, f"{where}: {arg!r} hard-codes a value; put it in the ConfigMap"


def test_the_check_rejects_a_misspelt_flag_and_a_misspelt_beam_option():
    objects = render("gke")
    (where, obj, template), = [(w, o, t) for w, o, t in pod_templates(objects) if w == "CronJob/tessera-preprocess"]
    container = template["spec"]["containers"][0]
    good = dict(container)
    check_container(objects, where, obj, template, good)
    typo = dict(container, args=container["args"] + ["--temp_locaton=gs://b/tmp"])
    with pytest.raises(AssertionError, match="temp_locaton"):
        check_container(objects, where, obj, template, typo)
    bad_flag = dict(container, args=[a.replace("--tile-size=", "--tile-size=x") for a in container["args"]])
    with pytest.raises(AssertionError, match="rejects"):
        check_container(objects, where, obj, template, bad_flag)


def test_the_check_rejects_an_undefined_variable():
    objects = render("local")
    (where, obj, template), = [(w, o, t) for w, o, t in pod_templates(objects) if w == "Job/tessera-train"]
    container = dict(template["spec"]["containers"][0])
    container["args"] = container["args"] + ["--epochs=$(EPOCS)"]
    with pytest.raises(AssertionError, match="EPOCS"):
        check_container(objects, where, obj, template, container)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_storage_paths_agree_between_beam_and_the_pods(overlay):
    """Dataflow writes STORAGE_URI; the pods read the same storage at STORAGE_MOUNT."""
    objects = render(overlay)
    config = the_config(objects)
    if config["STORAGE_URI"].startswith("gs://"):
        bucket = config["STORAGE_URI"][len("gs://"):].strip("/")
        assert bucket == config["GCS_BUCKET"]
        volumes = [o for o in objects if o["kind"] == "PersistentVolume"]
        assert [v["spec"]["csi"]["volumeHandle"] for v in volumes] == [bucket]
        claim = [o for o in objects if o["kind"] == "PersistentVolumeClaim"][0]
        bound = volumes[0]["spec"]["claimRef"]
        assert (bound["name"], bound["namespace"]) == (claim["metadata"]["name"], claim["metadata"]["namespace"])
        assert claim["spec"]["volumeName"] == volumes[0]["metadata"]["name"]
    else:
        assert config["STORAGE_URI"] == config["STORAGE_MOUNT"]
    for where, obj, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            if "data" in mounts:
                assert mounts["data"] == config["STORAGE_MOUNT"], where
            env = container_env(objects, obj, template, container)
            for arg in container["args"]:
                if "$(STORAGE_MOUNT)" in arg:
                    assert "data" in mounts, f"{where}: {arg} but the storage is not mounted"
                    assert expand(arg, env).split("=", 1)[1].startswith(mounts["data"])
