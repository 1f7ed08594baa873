"""What can be checked of the Dockerfile without a Docker engine (none on the test machines).

The runtime image's TensorFlow base matches the TensorFlow the project is tested with and
pyproject.toml allows; the wheel is built in a builder stage and only installed in the
runtime stage, which adds no build tools, runs as the non-root user the pods run as, has
``tessera`` as its entry point, and is the default target. The .dockerignore keeps tests,
.git and data out of the build context but not what the builder copies.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import sys

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from tests.test_k8s_render import OVERLAYS, ROOT, pod_templates, render

BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|git|python3?-dev|"
                         r"pip\s+wheel|python3?\s+-m\s+build|build==)\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages(text: str) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages: {'base', 'name', 'body': [(INSTRUCTION, args)]}."""
    args: dict[str, str] = {}
    found: list[dict] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append({"base": base, "name": name, "body": []})
        elif not found and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif found:
            found[-1]["body"].append((keyword, rest))
    return args, found


def chain(all_stages: list[dict], stage: dict) -> list[dict]:
    """The stage and the stages it is built FROM, nearest first."""
    named = {s["name"]: s for s in all_stages if s["name"]}
    result = [stage]
    while result[-1]["base"] in named:
        result.append(named[result[-1]["base"]])
    return result


def last(stage_chain: list[dict], keyword: str) -> str | None:
    for stage in stage_chain:
        values = [rest for key, rest in stage["body"] if key == keyword]
        if values:
            return values[-1]
    return None


DOCKERFILE = (ROOT / "Dockerfile").read_text()
ARGS, STAGES = stages(DOCKERFILE)
BY_NAME = {s["name"]: s for s in STAGES if s["name"]}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    (found,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == name]
    return found


def test_runtime_base_is_the_gpu_tensorflow_image_the_project_is_tested_with():
    tf_version = ARGS["TF_VERSION"]
    assert BY_NAME["tessera"]["base"] == f"tensorflow/tensorflow:{tf_version}-gpu"
    assert Version(tf_version) in requirement("tensorflow").specifier, "pyproject.toml does not allow it"
    assert tf_version == importlib.metadata.version("tensorflow"), "the tests run another TensorFlow"


def test_beam_and_python_pins_match_the_tested_stack():
    assert Version(ARGS["BEAM_VERSION"]) in requirement("apache-beam").specifier
    assert ARGS["BEAM_VERSION"] == importlib.metadata.version("apache-beam")
    assert ARGS["PYTHON_VERSION"] == "%d.%d" % sys.version_info[:2]
    assert "${TF_VERSION}" in DOCKERFILE and "${BEAM_VERSION}" in DOCKERFILE  # checked at install time


def test_the_image_installs_every_dependency_at_the_tested_version():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["tensorflow"] == ARGS["TF_VERSION"] and pins["apache-beam"] == ARGS["BEAM_VERSION"]
    for dependency in PYPROJECT["project"]["dependencies"]:
        name = Requirement(dependency).name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt does not pin {name}"
        assert Version(pins[name]) in Requirement(dependency).specifier, (name, pins[name])
        assert pins[name] == importlib.metadata.version(name), f"the tests run another {name}"
    runtime = [rest for key, rest in BY_NAME["tessera"]["body"] if key == "RUN"]
    assert any("--constraint /tmp/constraints.txt" in rest and "source=/src/constraints.txt" in rest
               for rest in runtime)


def test_every_image_is_pinned_to_a_version():
    for stage in STAGES:
        if stage["base"] in BY_NAME:
            continue
        image, _, tag = stage["base"].rpartition(":")
        assert image and tag and tag != "latest" and re.search(r"\d", tag), stage["base"]


def test_the_wheel_is_built_in_the_builder_and_only_installed_in_the_runtime():
    builder = BY_NAME["builder"]
    copied = {source.strip("./") for key, rest in builder["body"] if key == "COPY"
              for source in shlex.split(rest)[:-1] if not source.startswith("--")}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "README.md"} <= copied, "the builder misses part of the project"
    assert any(key == "RUN" and "--wheel" in rest for key, rest in builder["body"])
    runtime = [rest for key, rest in BY_NAME["tessera"]["body"] if key == "RUN"]
    assert any("from=builder" in rest and "pip install" in rest and ".whl" in rest for rest in runtime)


def test_no_build_tools_in_the_final_stages():
    for name in ("tessera", "dataflow-worker"):
        for key, rest in BY_NAME[name]["body"]:
            if key == "RUN":
                assert not BUILD_TOOLS.search(rest), f"{name}: {rest}"
            assert key != "ADD", f"{name}: use COPY"


def test_runtime_runs_tessera_as_the_non_root_user_the_pods_use():
    runtime = chain(STAGES, BY_NAME["tessera"])
    user = last(runtime, "USER")
    assert user and user.split(":")[0] not in ("0", "root")
    uid, gid = (int(x) for x in user.split(":"))
    assert json.loads(last(runtime, "ENTRYPOINT")) == ["tessera"]
    workdir = last(runtime, "WORKDIR")
    assert workdir and workdir.startswith("/home/")
    for overlay in OVERLAYS:
        for where, _, template in pod_templates(render(overlay)):
            context = template["spec"]["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), where
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
            assert workdir in mounts and "emptyDir" in volumes[mounts[workdir]], f"{where}: home is read-only"


def test_the_default_target_is_the_runtime_image():
    default = STAGES[-1]
    assert default["name"] is None and default["base"] == "tessera" and not default["body"]
    worker = chain(STAGES, BY_NAME["dataflow-worker"])
    assert json.loads(last(worker, "ENTRYPOINT")) == ["/opt/apache/beam/boot"]


def _matches(path: str, pattern: str) -> bool:
    """Docker's rule: a pattern matches a path or one of its parent folders (``**/`` any depth)."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch("/".join(parts[start:end]), pattern[3:]) for start in range(end)):
                return True
        elif fnmatch.fnmatch("/".join(parts[:end]), pattern):
            return True
    return False


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        if _matches(path, pattern.lstrip("!").strip("/")):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_tests_git_and_data_out_but_not_the_sources():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git", ".git/config", "tests", "tests/test_k8s_image.py", "data", "data/raw/a.png",
                 "k8s/base/kustomization.yaml", "pipelines/__pycache__/x.pyc", "tessera.egg-info"):
        assert _ignored(path, patterns), f"{path} would enter the build context"
    for path in ("pyproject.toml", "README.md", "constraints.txt", "tessera/cli.py", "schemas/example.py", "pipelines/preprocess/job.py",
                 "trainer/task.py"):
        assert not _ignored(path, patterns), f"{path} is needed by the builder"
