"""The package's layers import only downward: a module may import its own layer and the layers
below it, never one above.  Read from the source (every ``import`` statement, lazy ones inside
functions included), so a new upward import fails here."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: lowest first; a module belongs to the longest prefix listed
LAYERS = {
    "cryptfs.errors": 0, "cryptfs": 0,          # the root: __version__ and the lazy API door
    "cryptfs.util": 1,
    "cryptfs.crypto": 2,
    "cryptfs.backends": 3,
    "cryptfs.core": 4,
    "cryptfs.formats": 5,
    "cryptfs.stack": 6,
    "cryptfs.fuse": 7,
    "cryptfs.tools": 8, "cryptfs.api": 8,
    "cryptfs.cli": 9, "cryptfs.__main__": 9,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(module)


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (backends/ is cryptfs.backends)."""
    found = {}
    for top, package in (("cryptfs", "cryptfs"), ("backends", "cryptfs.backends")):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT / top).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(source: str, module: str, is_package: bool) -> set[str]:
    """The cryptfs modules ``source`` imports (``from cryptfs import x`` counts as
    ``cryptfs.x``; relative imports are resolved)."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cryptfs"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "cryptfs":
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    own = layer(module)
    return [f"{module} (layer {own}) imports {target} (layer {layer(target)})"
            for target in sorted(imports(source, module, is_package))
            if layer(target) > own]


def test_no_layer_imports_a_layer_above_it():
    found = []
    for module, path in modules().items():
        if module == "cryptfs":
            continue            # the root's lazy __getattr__ is the API's front door
        found += violations(path.read_text(), module, path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize("module, source", [
    ("cryptfs.core.device", "from cryptfs.fuse.queue import RequestQueue"),
    ("cryptfs.backends.software", "def f():\n    from cryptfs.core import convert"),
    ("cryptfs.crypto.spec", "import cryptfs.formats.luks"),
    ("cryptfs.formats.luks2.header", "from ... import stack"),
])
def test_an_upward_import_is_caught(module, source):
    assert violations(source, module)


def test_every_module_has_a_layer():
    for module in modules():
        layer(module)


def test_no_top_level_backends_module_is_imported():
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] == "backends" for n in names), module
