"""The package's layers import one way: the core (masks, the seam, the autograd functions, the modules) knows
nothing of what is built on it; ``tasks`` and ``opennmt`` build on the core; ``tools`` (the command lines and
benchmarks) build on all of them. And no module outside ``ops`` names a backend."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onmt_structdrop"
LAYERS = {"ops": 0, "core": 0, "tasks": 1, "opennmt": 1, "tools": 2}
MAY_IMPORT = {"ops": {"ops", "core"}, "core": {"ops", "core"}, "tasks": {"ops", "core", "tasks"},
              "opennmt": {"ops", "core", "opennmt"}, "tools": set(LAYERS)}


def layer_of(module):
    """``onmt_structdrop.tasks.lm`` -> ``tasks``; a module of the package's top level is the core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "core"


def imports(path):
    """The package modules that ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names] if not node.module or node.level else [target]
            yield from (n for n in names if n.startswith("onmt_structdrop"))
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("onmt_structdrop"))


SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    own = layer_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    for target in imports(path):
        assert layer_of(target) in MAY_IMPORT[own], f"{path.relative_to(PACKAGE)} ({own}) imports {target}"


@pytest.mark.parametrize("path", [p for p in SOURCES if "ops" not in p.relative_to(PACKAGE).parts],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_seam_names_a_backend(path):
    """Which backend serves, and whether compacting pays, is the seam's answer (``ops.choose``), not a rule held
    by a caller: no module outside ``ops`` names one."""
    code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    named = re.findall(r"""["'](?:native|cupy)["']|native_backend|cupy_backend|torch_backend""", code)
    assert not named, f"{path.relative_to(PACKAGE)} names {sorted(set(named))}"
