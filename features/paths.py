"""The files a run reads and writes: no output may overwrite, truncate or land in an input.

:func:`refuse_overlaps` is the one check every writing command runs before it writes
anything (:func:`features.streaming.stream_chunks`, :func:`features.events.load_events`
and the ``lifecycle`` commands, which know every input: labels, mappings, models). A
path is compared by what it *is*, not how it is spelled: resolved (symbolic links
followed) and, where both exist, with :func:`os.path.samefile` (hard links). A directory
input covers every file under it, so an output inside a Parquet directory is refused
too. Temporary files and spill directories are always created in the directory of
their output, so checking the outputs checks them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: ``(what, path)``: how a message names the file (``"--out"``, ``"the events file"``),
#: and the path; ``None`` paths are skipped.
Named = tuple[str, "str | Path | None"]


def refuse_overlaps(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """Raise ``ValueError`` (one line) if an output is, contains or lies inside an input,
    or is another output.

    Parameters
    ----------
    inputs
        Files and directories the run reads.
    outputs
        Files (or, for Spark and the simulator, directories) the run writes.

    Raises
    ------
    ValueError
        Naming the output and the path it collides with; nothing has been written.
    """
    ins = [(what, Path(p)) for what, p in inputs if p is not None]
    outs = [(what, Path(p)) for what, p in outputs if p is not None]
    for i, (what, out) in enumerate(outs):
        for other, path in ins:
            _refuse(what, out, f"{other} {path}", path, reading=True)
        for other, path in outs[i + 1 :]:
            _refuse(what, out, f"{other} {path}", path, reading=False)


def _refuse(what: str, out: Path, named: str, path: Path, *, reading: bool) -> None:
    start = f"refusing to write {what} {out}"
    if _same(out, path):
        also = "" if reading else "also "
        raise ValueError(f"{start}: it is {also}{named}; nothing was written")
    real_out, real_path = _real(out), _real(path)
    if real_path in real_out.parents:
        raise ValueError(f"{start}: it is inside {named}; nothing was written")
    if real_out in real_path.parents:
        raise ValueError(f"{start}: {named} is inside it; nothing was written")
    if reading and out.exists() and path.is_dir():
        # a hard link to one of the directory's files, from outside it
        for folder, _, files in os.walk(path):
            for name in files:
                if _same(out, Path(folder) / name):
                    raise ValueError(
                        f"{start}: it is {Path(folder) / name}, a file of {named}; "
                        "nothing was written"
                    )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


__all__ = ["Named", "refuse_overlaps"]
