"""The README's layout table names every Python module of the repository, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_table() -> list[tuple[str, str]]:
    """(file cell, description) rows of the README's Layout section."""
    section = ROOT.joinpath("README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [(cells[0], cells[1]) for line in section.splitlines()
            if line.startswith("| `") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 2]


def named_modules() -> set[str]:
    """Every module path the table names: `a/b.py`, `a/b.py, c.py` (siblings), or `pkg/` with its files listed."""
    named: set[str] = set()
    for files, description in layout_table():
        paths = re.findall(r"`([^`]+)`", files)
        folder = str(Path(paths[0]).parent) if paths[0].endswith(".py") else ""
        for path in paths:
            if path.endswith("/"):
                named.update(f"{path}{name}" for name in re.findall(r"`([\w]+\.py)`", description))
            elif path.endswith(".py"):
                named.add(path if "/" in path or folder in ("", ".") else f"{folder}/{path}")
    return named


def test_every_module_is_in_the_layout_table_and_every_row_exists():
    modules = {str(path.relative_to(ROOT)) for path in [*ROOT.glob("*.py"), *ROOT.glob("sam_ls_backend/**/*.py")]
               if path.name != "__init__.py" or path.parent.name in ("pipelines", "outputs")}
    named = named_modules()
    assert modules - named == set(), "modules missing from the README's Layout table"
    assert named - modules == set(), "the README's Layout table names files that do not exist"


def test_the_root_holds_at_most_eight_python_files():
    assert len(list(ROOT.glob("*.py"))) <= 8
