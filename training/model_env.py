"""What a logged model needs to run: this package's wheel and the requirements naming it.

A lifecycle model is stored as code that imports ``customer_lifecycle`` (see
``scoring/model_code.py``), so an environment built from the model's own files must
install this package at the exact version that trained it. The package is not on a
public index, so the model carries it: :func:`build_wheel` writes a wheel of the
*imported* package (it needs no source tree, no build tool and no network, so it works
from a strict editable install and from a user's plain ``pip install`` alike) and
:func:`model_environment` gives the artifacts and pip requirements to log it with.

The model's ``requirements.txt`` then reads::

    artifacts/wheels/customer_lifecycle-<version>-py3-none-any.whl
    customer-lifecycle==<version>
    mlflow==<version>
    lightgbm==<version>
    ...

MLflow's environment managers run ``pip install -r requirements.txt`` with the current
directory in (a link copy of) the model directory, where the relative wheel path
resolves. Because a file requirement for the project comes first, pip takes that file
as the only candidate for ``customer-lifecycle`` and never asks an index for the name
(a ``--find-links`` line would let an index's package of the same name compete); the
``==`` pin after it makes a wheel of another version fail the install instead of
being used. (The order matters: pip's resolver looks a requirement up as soon as it
reads it, so a pin before the file would be searched for on the index alone.) The
libraries that compute the scores are pinned to the versions that trained the model;
everything else the package needs comes from the wheel's ``Requires-Dist`` and is
resolved by pip from the index.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageMetadata, distribution, version
from pathlib import Path

import customer_lifecycle

#: the distribution whose import package is ``customer_lifecycle``
DISTRIBUTION = "customer-lifecycle"
#: pyfunc artifact (a folder) holding the wheel; MLflow stores it under ``artifacts/``
WHEELS_ARTIFACT = "wheels"
#: the libraries that load and compute a model's scores: pinned to the training versions
SCORING_LIBRARIES = ("mlflow", "lightgbm", "numpy", "pandas", "numba", "pyarrow", "pyyaml")

# the files of the package that a wheel ships (pyproject.toml's package-data plus modules)
_SHIPPED_SUFFIXES = {".py", ".yaml"}
_SHIPPED_NAMES = {"py.typed"}
# fixed zip timestamps: the same package always gives the same wheel, byte for byte
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ModelEnvironment:
    """Arguments for ``mlflow.pyfunc.log_model``: ``artifacts`` and ``pip_requirements``."""

    wheel: Path
    artifacts: dict[str, str]
    pip_requirements: list[str]


def model_environment(workdir: str | Path) -> ModelEnvironment:
    """Build the package's wheel in ``workdir`` and the requirements that install it.

    ``workdir`` should be a temporary directory that outlives the ``log_model`` call.
    """
    wheels = Path(workdir) / WHEELS_ARTIFACT
    wheel = build_wheel(wheels)
    # pyfunc artifacts land in the model's artifacts/ folder under their own names
    in_model = f"artifacts/{WHEELS_ARTIFACT}/{wheel.name}"
    name = distribution(DISTRIBUTION).metadata["Name"]
    pins = [f"{lib}=={version(lib)}" for lib in SCORING_LIBRARIES]
    # the wheel before the pin: see the module docstring
    requirements = [in_model, f"{name}=={version(DISTRIBUTION)}", *pins]
    return ModelEnvironment(wheel, {WHEELS_ARTIFACT: str(wheels)}, requirements)


def build_wheel(out_dir: str | Path) -> Path:
    """Write a pure-Python wheel of the imported ``customer_lifecycle`` package.

    The wheel holds the package's modules and configuration files (``.py``, ``.yaml``,
    ``py.typed``; never ``__pycache__``) read from the package directory that Python
    imports, and a ``.dist-info`` with METADATA (name, version and the requirements
    of the installed distribution, without its extras), WHEEL, entry_points.txt and
    RECORD with sha256 hashes.

    Returns
    -------
    Path
        ``out_dir/customer_lifecycle-<version>-py3-none-any.whl``.
    """
    dist = distribution(DISTRIBUTION)
    meta = dist.metadata
    name, ver = meta["Name"], meta["Version"]
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{ver}"
    dist_info = f"{stem}.dist-info"

    # not resolved: in a strict editable install the package folder is a tree of links
    root = Path(customer_lifecycle.__file__).parent
    files = {
        f"{root.name}/{path.relative_to(root).as_posix()}": path.read_bytes()
        for path in _package_files(root)
    }
    files[f"{dist_info}/METADATA"] = _metadata(meta).encode()
    wheel_info = ["Wheel-Version: 1.0", f"Generator: {__name__}", "Root-Is-Purelib: true"]
    files[f"{dist_info}/WHEEL"] = "\n".join([*wheel_info, "Tag: py3-none-any", ""]).encode()
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files[f"{dist_info}/entry_points.txt"] = entry_points.encode()

    record_name = f"{dist_info}/RECORD"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arcname in sorted(files):
        writer.writerow([arcname, _record_hash(files[arcname]), len(files[arcname])])
    writer.writerow([record_name, "", ""])
    files[record_name] = record.getvalue().encode()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # the dist-info goes last, RECORD at the very end, as the wheel spec recommends
        for arcname in sorted(files, key=lambda a: (a.startswith(dist_info), a == record_name, a)):
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[arcname])
    return wheel


def _package_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or not path.is_file():  # is_file drops dead links too
            continue
        if path.suffix in _SHIPPED_SUFFIXES or path.name in _SHIPPED_NAMES:
            found.append(path)
    return found


def _metadata(meta: PackageMetadata) -> str:
    """METADATA of the wheel: the installed distribution's, without extras."""
    lines = ["Metadata-Version: 2.1", f"Name: {meta['Name']}", f"Version: {meta['Version']}"]
    for field in ("Summary", "Requires-Python"):
        if field in meta:
            lines.append(f"{field}: {meta[field]}")
    for req in meta.get_all("Requires-Dist") or []:
        # an extra's requirement carries an `extra == "..."` marker; the model needs none
        if not re.search(r"\bextra\s*==", req):
            lines.append(f"Requires-Dist: {req}")
    return "\n".join(lines) + "\n"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"
