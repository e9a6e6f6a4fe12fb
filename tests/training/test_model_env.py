"""A logged model carries this package's wheel and names it, so it loads without the repository.

The wheel is built from the imported package and checked against pyproject.toml (its
files and requirements) and the wheel format (RECORD hashes). A small model is trained
into a real SQLite tracking store; the slow test installs it in a fresh virtualenv from
the model's own requirements.txt, as MLflow's environment managers do, and compares the
predictions there with this environment's.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import hashlib
import io
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.model_env import build_wheel
from customer_lifecycle.training.train import TrainConfig, train
from mlflow.models import Model

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = version("customer-lifecycle")
WHEEL_NAME = f"customer_lifecycle-{VERSION}-py3-none-any.whl"
DIST_INFO = f"customer_lifecycle-{VERSION}.dist-info"
NAME = "model-env-test"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registered model trained on a small simulated log, downloaded from the registry."""
    root = tmp_path_factory.mktemp("model-env")
    data = root / "data"
    write_dataset(data, customers=800, seed=3, as_of=["2024-12-31"])
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.chdir(root)  # the default experiment's artifacts land here, not in the repository
    try:
        result = train(
            data / "events.parquet",
            labels_path=data / "labels.csv",
            config=TrainConfig(max_rounds=10, seed=1, cv_folds=2),  # plumbing: few folds
            register=NAME,
            say=lambda _: None,
        )
        assert result.model_uri == f"models:/{NAME}/1"
        return Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(root / "m")))
    finally:
        mp.undo()


def _shipped_files() -> set[str]:
    """What pyproject.toml puts in the wheel: every module, every .yaml, py.typed."""
    names = set()
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        base = ROOT / folder
        prefix = package.replace(".", "/")
        for path in base.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in {".py", ".yaml"} or path.name == "py.typed":
                names.add(f"{prefix}/{path.relative_to(base).as_posix()}")
    return names


def _record(zf: zipfile.ZipFile) -> list[list[str]]:
    return list(csv.reader(io.StringIO(zf.read(f"{DIST_INFO}/RECORD").decode())))


# -- the wheel --------------------------------------------------------------------------


def test_wheel_holds_exactly_the_package_modules_and_configuration(wheel: Path) -> None:
    assert wheel.name == WHEEL_NAME
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {n for n in names if not n.startswith(f"{DIST_INFO}/")}
    assert package == _shipped_files()
    assert "customer_lifecycle/features/config/definition.yaml" in package
    assert "customer_lifecycle/scoring/model_code.py" in package
    assert names - package == {
        f"{DIST_INFO}/{n}" for n in ("METADATA", "WHEEL", "entry_points.txt", "RECORD")
    }


def test_record_lists_every_file_with_its_sha256_and_size(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    rows = _record(zf)
    assert {row[0] for row in rows} == set(zf.namelist())
    for path, digest, size in rows:
        if path == f"{DIST_INFO}/RECORD":
            assert (digest, size) == ("", "")  # RECORD cannot hash itself
            continue
        data = zf.read(path)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}", path
        assert int(size) == len(data), path


def test_metadata_names_this_version_and_the_package_requirements(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    meta = email.parser.Parser().parsestr(zf.read(f"{DIST_INFO}/METADATA").decode())
    assert meta["Name"] == "customer-lifecycle"
    assert meta["Version"] == VERSION == PYPROJECT["project"]["version"]
    # the base requirements, none of an extra's (pyspark, pytest, ...)
    required = [r.replace(" ", "") for r in meta.get_all("Requires-Dist")]
    assert required == [r.replace(" ", "") for r in PYPROJECT["project"]["dependencies"]]
    wheel_info = zf.read(f"{DIST_INFO}/WHEEL").decode().splitlines()
    assert {"Wheel-Version: 1.0", "Root-Is-Purelib: true", "Tag: py3-none-any"} <= set(wheel_info)
    entry_points = zf.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert "lifecycle = customer_lifecycle.cli:app" in entry_points


def test_the_same_package_gives_the_same_wheel(wheel: Path, tmp_path: Path) -> None:
    assert build_wheel(tmp_path).read_bytes() == wheel.read_bytes()


# -- the logged model -------------------------------------------------------------------


def test_logged_model_pins_the_package_and_carries_its_wheel(model_dir: Path, wheel: Path) -> None:
    lines = (model_dir / "requirements.txt").read_text().split()
    carried = f"artifacts/wheels/{WHEEL_NAME}"
    # the wheel first, then the pin: pip then takes the carried file as the only candidate
    assert lines[:2] == [carried, f"customer-lifecycle=={VERSION}"]
    assert f"mlflow=={version('mlflow')}" in lines
    assert f"lightgbm=={version('lightgbm')}" in lines
    assert (model_dir / carried).read_bytes() == wheel.read_bytes()
    flavor = Model.load(str(model_dir)).flavors["python_function"]
    assert flavor["artifacts"]["wheels"]["path"] == "artifacts/wheels"
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    assert python_env["dependencies"] == ["-r requirements.txt"]
    conda = yaml.safe_load((model_dir / "conda.yaml").read_text())
    conda_pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert conda_pip[:2] == lines[:2]


def test_pip_finds_the_pinned_package_in_the_model_alone(model_dir: Path) -> None:
    # no index at all: the pin is met by the carried wheel, resolved from the model directory
    reqs = (model_dir / "requirements.txt").read_text().split()[:2]
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", *reqs],
        cwd=model_dir,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert f"Would install customer-lifecycle-{VERSION}" in out.stdout


# -- a fresh environment built from the model's files -----------------------------------

_PREDICT = """
import importlib.metadata, json, sys, sysconfig
import customer_lifecycle, mlflow
from mlflow.models import Model

model_dir, out = sys.argv[1], sys.argv[2]
example = Model.load(model_dir).load_input_example(model_dir)
mlflow.pyfunc.load_model(model_dir).predict(example).to_parquet(out)
print(json.dumps({
    "package": customer_lifecycle.__file__,
    "site_packages": sysconfig.get_paths()["purelib"],
    "version": importlib.metadata.version("customer-lifecycle"),
}))
"""


@pytest.mark.slow
def test_model_installs_and_predicts_in_a_fresh_virtualenv(model_dir: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # nothing of this environment or the repository leaks in; pip's own settings and
    # cache (HOME) stay, so the packages come from the index and repeated runs are fast
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in {"VIRTUAL_ENV", "MLFLOW_TRACKING_URI"}
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"

    def run(*args: str) -> str:
        out = subprocess.run(
            [str(python), *args], cwd=model_dir, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    # --no-compile: byte-compiling all of mlflow, scipy, sklearn ... costs CPU time and
    # changes nothing here (Python compiles what the prediction imports as it imports it)
    run("-m", "pip", "install", "--quiet", "--no-compile", "-r", "requirements.txt")
    there = tmp_path / "predictions.parquet"
    facts = json.loads(run("-c", _PREDICT, str(model_dir), str(there)).splitlines()[-1])

    assert Path(facts["package"]).is_relative_to(facts["site_packages"])
    assert Path(facts["site_packages"]).is_relative_to(venv)
    assert facts["version"] == VERSION
    assert (venv / "bin" / "lifecycle").is_file()  # the console script came with the wheel

    example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    here = mlflow.pyfunc.load_model(str(model_dir)).predict(example)
    pd.testing.assert_frame_equal(pd.read_parquet(there), here.reset_index(drop=True))
