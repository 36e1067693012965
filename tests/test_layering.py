"""The parts meet only in ``protocol`` (and ``edgefleet``, what they share that is not the wire):
``agent``, ``gateway`` and ``cloud`` never import one another. Read from the source, so a lazy
import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("agent", "gateway", "cloud")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_no_other_part(part: str) -> None:
    others = set(PARTS) - {part}
    found = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / part).rglob("*.py")
        for name in imported(path) & others
    }
    assert not found, sorted(found)
