"""The house rules, checked on the sources: planning never needs torch, one door to torch.distributed, layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("partition", "runtime")
# The one module that may import torch.distributed, and the scripts' wrapper of torch's own pipelining schedules
# (a peer we benchmark against, not part of pipegraph's execution path).
TRANSPORT = "runtime.comm"
PEERS_WRAPPER = "scripts/_peers.py"
# Compute never communicates: the operators and the stage engines must not import the transport.
COMPUTE = ("runtime.ops", "runtime.engine.stage", "runtime.engine.direct")
# Each layer may import only the layers below it (or its own package). Lowest first.
LAYERS = (
    ("partition",),
    ("runtime.comm", "runtime.transport", "runtime.stats", "runtime.output", "runtime.threads"),
    ("runtime.ops",),
    ("runtime.engine",),
    ("runtime.train", "runtime.calibrate"),
    ("runtime.compare", "runtime.bench", "runtime.planner"),
    ("runtime.chapter",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module name this file imports (absolute names; ``from a import b`` yields ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _uses_torch_distributed(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "distributed" and isinstance(node.value, ast.Name) \
                and node.value.id == "torch":
            return True
    return any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in _imports(path))


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


MODULES = _modules()


def test_every_partition_module_imports_where_torch_cannot():
    names = sorted(m for m in MODULES if _within(m, "partition"))
    assert "partition.schedule.simulate" in names and "partition.memory" in names
    code = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'runtime'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_the_blocker_really_blocks_torch():
    code = "import importlib.abc, sys\n" \
           "class B(importlib.abc.MetaPathFinder):\n" \
           "    def find_spec(self, name, path=None, target=None):\n" \
           "        if name.split('.')[0] == 'torch': raise ImportError('blocked')\n" \
           "sys.meta_path.insert(0, B())\nimport runtime.ops.functions\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "blocked" in out.stderr


def test_only_the_transport_touches_torch_distributed():
    offenders = [name for name, path in MODULES.items() if name != TRANSPORT and _uses_torch_distributed(path)]
    scripts = [p for p in sorted((ROOT / "scripts").glob("*.py")) if str(p.relative_to(ROOT)) != PEERS_WRAPPER]
    offenders += [str(p.relative_to(ROOT)) for p in scripts if _uses_torch_distributed(p)]
    assert offenders == []
    assert _uses_torch_distributed(MODULES[TRANSPORT]) and _uses_torch_distributed(ROOT / PEERS_WRAPPER)


def test_compute_never_imports_the_transport():
    compute = [name for name in MODULES if any(_within(name, c) for c in COMPUTE)]
    assert "runtime.ops.functions" in compute and "runtime.engine.stage" in compute
    offenders = {name: sorted(i for i in _imports(MODULES[name]) if _within(i, TRANSPORT)) for name in compute}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the executor and the pipeline move tensors through the Transport protocol, not through the door itself
    for name in ("runtime.engine.executor", "runtime.engine.pipeline"):
        assert not any(_within(i, TRANSPORT) for i in _imports(MODULES[name])), name


def test_partition_never_imports_runtime_or_torch():
    offenders = {}
    for name, path in MODULES.items():
        if _within(name, "partition"):
            bad = sorted(i for i in _imports(path) if i.split(".")[0] in ("runtime", "torch"))
            if bad:
                offenders[name] = bad
    assert offenders == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_has_a_layer_and_imports_only_below_it(name):
    if name in PACKAGES or name == "runtime.train.data":
        return
    own = _layer(name)
    assert own is not None, f"{name}: not in any layer of LAYERS (add it where it belongs)"
    upward = sorted(i for i in _imports(MODULES[name]) if i.split(".")[0] in PACKAGES
                    and (_layer(i) or 0) > own)
    assert upward == [], f"{name} (layer {own}) imports from above: {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_opens_with_a_one_line_docstring_and_stays_short(name):
    path = MODULES[name]
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.splitlines()[0].strip(), f"{path}: no module docstring"
    if path.name != "__init__.py":
        assert len(path.read_text().splitlines()) <= 300, f"{path}: over 300 lines: split it by idea"
