"""The project's documents point only at files a user of the project has: no path outside the
repository (the README once sent readers to ../shared/DESIGN.md), every document path named
exists, and docs/architecture.md names only modules that exist (so it is changed with the code)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_IN_BACKTICKS = re.compile(r"`([A-Za-z0-9_./-]+\.(?:md|py|yaml))`")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)\)")


def test_no_document_points_outside_the_repository() -> None:
    for document in DOCUMENTS:
        text = document.read_text()
        for path in PATH_IN_BACKTICKS.findall(text) + MARKDOWN_LINK.findall(text):
            assert not path.startswith(("../", "/")), f"{document.name} names {path}"


def test_readme_points_at_the_architecture_page() -> None:
    assert "`docs/architecture.md`" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "architecture.md").is_file()


def test_every_path_the_documents_name_exists() -> None:
    for document in DOCUMENTS:
        for path in PATH_IN_BACKTICKS.findall(document.read_text()):
            if path.endswith((".md", ".yaml")) and "/" in path:
                assert (ROOT / path).exists(), f"{document.name} names missing {path}"


def test_the_architecture_page_names_modules_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for p in PATH_IN_BACKTICKS.findall(text) if p.endswith(".py")]
    assert len(modules) >= 20
    for module in modules:
        candidates = [ROOT / "engine" / module, ROOT / module]
        assert any(c.exists() for c in candidates), f"architecture.md names missing {module}"
