"""Import rules: the domain stays framework-free and the two apps never import each other."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RULES = {
    "core": {"aiogram", "aiohttp", "bot", "server"},
    "bot": {"server"},
    "server": {"bot", "aiogram"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_respects_import_rules(package):
    violations = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                  for path in sorted((ROOT / package).rglob("*.py"))
                  for line, name in _imports(path) if name in RULES[package]]
    assert not violations, "\n".join(violations)


def test_rule_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom aiohttp import web\nimport bot.handlers\n")
    assert [n for _, n in _imports(bad)] == ["os", "aiohttp", "bot"]
