"""The user documentation stands alone and keeps up with the code.

* every relative link of README.md and docs/*.md reaches a file (and a heading, for
  ``#anchors``);
* every ``docs/<name>.md`` the code points at exists;
* nothing in the repository points at documents outside it;
* docs/cli.md documents every ``lifecycle`` command and every option of each.
"""

from __future__ import annotations

import os
import re
import subprocess
import unicodedata
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer.main

from customer_lifecycle.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# Folders that are not the repository's own content.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "build",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "demo-output",
    "mlartifacts",
    "mlruns",
}

# [text](target) and ![alt](target); the target stops at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# Built so that this file's own text does not match.
CODE_DOC_REF = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)(#[A-Za-z0-9_-]+)?")


def _prose_lines(path: Path) -> list[str]:
    """Lines of a Markdown file outside fenced code blocks."""
    lines, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    kept = []
    for ch in text:
        if ch in "-_ " or unicodedata.category(ch)[0] in "LN":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path):
        m = HEADING.match(line)
        if m is None:
            continue
        slug = _slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def _relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose_lines(path):
        # inline code is not a link
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto:, ...
            links.append(target)
    return links


def test_slug_matches_github() -> None:
    # the anchors GitHub gives to headings of the kinds the docs use
    assert _slug("Registry and the `champion` alias") == "registry-and-the-champion-alias"
    assert _slug("`lifecycle score`") == "lifecycle-score"
    assert _slug("Scale: one machine, Spark, and the targets") == (
        "scale-one-machine-spark-and-the-targets"
    )
    assert _slug("`GET /healthz`, `GET /readyz`") == "get-healthz-get-readyz"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def _source_files(patterns: tuple[str, ...]) -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if any(path.match(p) for p in patterns):
                out.append(path)
    return sorted(out)


def test_docs_the_code_points_at_exist() -> None:
    files = _source_files(("*.py", "*.yaml", "*.yml", "MLproject", "*.ipynb"))
    assert any(f.name == "cli.py" for f in files)  # the walk found the code
    missing = []
    for path in files:
        for m in CODE_DOC_REF.finditer(path.read_text(encoding="utf-8", errors="replace")):
            name, anchor = m.group(1), (m.group(2) or "")[1:]
            target = DOCS / name
            if not target.is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
            elif anchor and anchor not in anchors(target):
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}#{anchor} (no such heading)")
    assert not missing, "the code points at missing docs:\n" + "\n".join(missing)


def _repository_files() -> list[Path]:
    """Tracked files and new files not ignored; the whole tree when git is unavailable."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return _source_files(("*",))
    paths = [ROOT / p for p in listed.split("\0") if p]
    return sorted(
        p
        for p in paths
        if p.is_file() and not any(part in SKIPPED_DIRS for part in p.relative_to(ROOT).parts)
    )


# Pointers at documents that live outside the repository; assembled here so that this
# file does not contain them.
OUTSIDE_POINTERS = ("SP" + "EC §", "SP" + "EC.md", ".." + "/shared")


def test_nothing_points_outside_the_repository() -> None:
    files = _repository_files()
    assert any(f.name == "README.md" for f in files)
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for needle in OUTSIDE_POINTERS:
            if needle in text:
                hits.append(f"{path.relative_to(ROOT)}: {needle!r}")
    assert not hits, "the repository must stand alone:\n" + "\n".join(hits)


# -- docs/cli.md against the Typer app -------------------------------------------------

CLI_DOC = DOCS / "cli.md"
COMMAND_HEADING = re.compile(r"^## `lifecycle ([a-z0-9-]+)`\s*$")
OPTION_ROW = re.compile(r"^\|\s*`(--[a-z0-9-]+)`")


def _command_sections() -> dict[str, str]:
    """The text of each ``## `lifecycle <command>` `` section of docs/cli.md."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in _prose_lines(CLI_DOC):
        if line.startswith("## "):
            m = COMMAND_HEADING.match(line)
            current = sections.setdefault(m.group(1), []) if m else None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _commands() -> dict[str, Any]:
    """The app's commands as click commands (Typer builds them on its own click)."""
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", None)
    assert commands, "the lifecycle app has no subcommands"
    return dict(commands)


def _options(command: Any) -> list[str]:
    """Every option spelling the command's --help shows (``--x`` and ``--no-x``)."""
    names: list[str] = []
    for param in command.params:
        if param.param_type_name == "option":
            names += [*param.opts, *param.secondary_opts]
    return names


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_cli_doc_has_a_section_per_command() -> None:
    commands, sections = _commands(), _command_sections()
    assert sorted(sections) == sorted(commands), (
        "docs/cli.md needs one '## `lifecycle <command>`' section per command, and none "
        f"for commands that do not exist: documented {sorted(sections)}, "
        f"actual {sorted(commands)}"
    )


@pytest.mark.parametrize("name", sorted(_commands()))
def test_cli_doc_lists_every_option(name: str) -> None:
    section = _command_sections().get(name, "")
    options = _options(_commands()[name])
    assert options, f"{name} has no options: the Typer app was not read"
    undocumented = [o for o in options if not _mentions(section, o)]
    assert not undocumented, (
        f"docs/cli.md, section `lifecycle {name}`, does not document {undocumented}"
    )
    # the options table lists only options that exist
    documented = [m.group(1) for line in section.splitlines() if (m := OPTION_ROW.match(line))]
    stale = [o for o in documented if o not in options]
    assert not stale, f"docs/cli.md documents options `lifecycle {name}` lacks: {stale}"


def test_cli_doc_mentions_help() -> None:
    # --help is on every command and the group; click adds it, so it has no param entry
    assert _mentions(CLI_DOC.read_text(encoding="utf-8"), "--help")


def test_undocumented_option_is_caught() -> None:
    # the check above must fail for an option that the doc does not name: a command
    # like `score` with one documented and one new option
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def score(
        events: Annotated[str, typer.Option(help="documented")],
        brand_new: Annotated[bool, typer.Option(help="not documented")] = False,
    ) -> None:
        """A stand-in."""

    section = _command_sections()["score"]
    options = _options(typer.main.get_command(probe))
    assert options == ["--events", "--brand-new", "--no-brand-new"]
    assert [o for o in options if not _mentions(section, o)] == ["--brand-new", "--no-brand-new"]
