"""The package's layout holds: client, server and data never reach into a runtime or the command line,
modules stay small, and the public API imports."""

import ast
import importlib
import os

import pytest

import fedsq_hf.federated
from helpers import ROOT

FEDERATED = os.path.join(ROOT, "fedsq_hf", "federated")
# layer -> the layers of fedsq_hf.federated it must not import
FORBIDDEN = {
    "fields.py": {"protocol", "data", "client", "server", "simulation", "cli", "callbacks", "io"},
    "protocol": {"data", "client", "server", "simulation", "cli", "callbacks", "io"},
    "data": {"client", "server", "simulation", "cli", "callbacks", "io"},
    "client": {"server", "simulation", "cli", "callbacks", "io"},
    "server": {"client", "simulation", "cli", "callbacks", "io"},
}


def _modules():
    for root, _, names in os.walk(FEDERATED):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, FEDERATED), path


def _imported_layers(relpath, path):
    """The `fedsq_hf.federated` layers (first package below it) a module imports, at any point in its code."""
    package = ["fedsq_hf", "federated", *os.path.dirname(relpath).split(os.sep)] if os.path.dirname(relpath) else \
        ["fedsq_hf", "federated"]
    layers = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            names = [target + [a.name] for a in node.names] if not node.module else [target]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        for parts in names:
            if parts[:2] == ["fedsq_hf", "federated"] and len(parts) > 2:
                layers.add(parts[2])
    return layers


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_data_client_and_server_import_neither_a_runtime_nor_the_command_line(layer):
    checked = 0
    for relpath, path in _modules():
        if relpath.split(os.sep)[0] == layer:
            bad = _imported_layers(relpath, path) & FORBIDDEN[layer]
            assert not bad, f"{relpath} imports {sorted(bad)}"
            checked += 1
    assert checked >= (1 if layer.endswith(".py") else 3)


def test_the_import_reader_sees_what_a_module_imports():
    path = os.path.join(FEDERATED, "runtime", "loop.py")
    assert {"client", "server", "callbacks", "io", "protocol"} <= _imported_layers("runtime/loop.py", path)


def test_modules_stay_small():
    long = {relpath: n for relpath, path in _modules() if (n := len(open(path).read().splitlines())) > 260}
    assert not long, f"modules over 260 lines: {long}"


def test_the_public_api_imports():
    for name in fedsq_hf.federated.__all__:
        assert getattr(fedsq_hf.federated, name) is not None, name
    for relpath, _ in _modules():
        module = "fedsq_hf.federated." + relpath[:-3].replace(os.sep, ".").removesuffix(".__init__").removesuffix("__init__")
        importlib.import_module(module.rstrip("."))
