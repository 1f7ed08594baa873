"""The floor plan holds: import directions between packages, and one definition of the
prediction directory's names (``schemas.layout``) for everything that reads or writes it."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "pipelines", "trainer", "tessera", "bench")


def modules(*folders: str) -> list[pathlib.Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def imported(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def offending(paths: list[pathlib.Path], forbidden: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    found = []
    for path in paths:
        for name in sorted(imported(path, top_level_only)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.name} imports {name}")
    return found


def test_schemas_import_no_job_and_no_engine():
    assert offending(modules("schemas"), ("pipelines", "trainer", "tessera", "apache_beam", "keras")) == []
    # TensorFlow Datasets only lazily, where a TFDS feature description is built
    assert offending(modules("schemas"), ("tensorflow", "tensorflow_datasets"), top_level_only=True) == []


def test_pipelines_and_trainer_never_import_each_other():
    assert offending(modules("pipelines"), ("trainer",)) == []
    assert offending(modules("trainer"), ("pipelines",)) == []


def test_the_pure_core_knows_no_beam_no_tensorflow_and_no_job():
    forbidden = ("apache_beam", "tensorflow", "tensorflow_datasets", "keras", "pipelines.beam",
                 "pipelines.preprocess", "pipelines.predict", "pipelines.evaluate")
    assert offending(modules("pipelines/core"), forbidden) == []


def test_jobs_do_not_import_each_other():
    jobs = ("preprocess", "predict", "evaluate")
    for job in jobs:
        others = tuple(f"pipelines.{j}" for j in jobs if j != job)
        assert offending(modules(f"pipelines/{job}"), others) == [], job


def test_bench_imports_nothing_from_the_tests():
    assert offending(modules("bench"), ("tests",)) == []


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from apache_beam.io import filesystems\n")
    assert offending([bad], ("apache_beam",)) and not offending([bad], ("apache_beam",), top_level_only=True)


# ---------------------------------------------------------------- prediction directory names

# Literals that spell a prediction-directory name: a folder and what is below it, or a file.
# ("rows", "rejected" and "probabilities" alone are also keys and tags, so only as folders.)
PREDICTION_NAME = re.compile(r"^(masks|overlays|_tmp)$|^(masks|overlays|probabilities|rows|rejected|_tmp)/"
                             r"|^predictions[^/]*\.parquet$|^rejected[^/]*\.jsonl$|^_SUCCESS")
READERS_AND_WRITERS = modules("pipelines/predict", "pipelines/evaluate") + [
    p for p in modules("tests") if p.name.startswith(("test_predict", "test_evaluate", "test_k8s_jobs"))]


def spelled_names(path: pathlib.Path) -> list[str]:
    """String literals (docstrings aside) in ``path`` that spell a prediction-directory name."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if PREDICTION_NAME.search(text) or PREDICTION_NAME.search(text.lstrip("/")):
                found.append(f"{path.name}:{node.lineno}: {text!r}")
    return found


@pytest.mark.parametrize("path", READERS_AND_WRITERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_prediction_directory_names_come_only_from_schemas_layout(path):
    assert spelled_names(path) == []


def test_the_name_checker_finds_a_spelled_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""masks/ in a docstring is fine."""\nA = "masks"\nB = f"{root}/rows/{x}"\nC = "predictions-00001-of-00002.parquet"\n')
    assert sorted(line.split(": ", 1)[1] for line in spelled_names(bad)) == ["'/rows/'", "'masks'", "'predictions-00001-of-00002.parquet'"]
