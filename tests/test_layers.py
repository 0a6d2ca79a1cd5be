"""The architecture, checked on the source: layers, no import cycles, no hidden imports.

Layers (lowest first): theory (imports nothing of ours above it) < figures (theory only) and
verify (theory only) < verify.cli (anything). Nothing imports verify.cli. Imports of our own
modules sit at the top of a module, never inside a function (where they would hide a cycle).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"theory": "theory", "verify": "verify", "figures": "figures"}


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for top in PACKAGES:
    for p in (ROOT / top).rglob("*.py"):
      parts = list(p.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      mods[".".join(parts)] = p
  mods[""] = ROOT / "src" / "nondecoupling" / "__init__.py"  # the package's own __init__
  return mods


MODULES = _modules()


def _resolve(module: str, path: pathlib.Path, node: ast.ImportFrom | ast.Import) -> list[str]:
  """Our modules an import statement refers to (names relative to the nondecoupling package)."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  names = []
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  else:
    base = node.module or ""
    if node.level:
      parts = package.split(".") if package else []
      parts = parts[: len(parts) - node.level + 1]
      base = ".".join(parts + ([base] if base else []))
    names = [base] + [f"{base}.{a.name}" if base else a.name for a in node.names]
  out = []
  for n in names:
    if n.startswith("nondecoupling."):
      n = n[len("nondecoupling."):]
    while n and n not in MODULES:
      n = n.rpartition(".")[0]
    if n and n != module:
      out.append(n)
  return out


def _graph():
  graph, nested = {}, []
  for module, path in MODULES.items():
    tree = ast.parse(path.read_text())
    deps = set()
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        targets = _resolve(module, path, node)
        deps.update(targets)
        if targets and id(node) not in top_level:
          nested.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    graph[module] = deps
  return graph, nested


GRAPH, NESTED = _graph()


def _layer(module: str) -> str:
  if module.startswith("verify.cli"):
    return "cli"
  return module.split(".")[0] or "api"


ALLOWED = {
    "theory": {"theory"},
    "figures": {"figures", "theory"},
    "verify": {"verify", "theory"},
    "cli": {"cli", "verify", "theory", "figures"},
    "api": set(),
}


def test_every_package_is_seen():
  assert {"theory.objectives", "theory.tree.policy", "theory.tree.recipes.registry",
          "verify.registry", "verify.tree_io", "figures.theorems", "verify.cli"} <= set(GRAPH)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m))
def test_imports_respect_the_layers(module):
  bad = sorted(t for t in GRAPH[module] if _layer(t) not in ALLOWED[_layer(module)])
  assert not bad, f"{module} imports {bad} (layer {_layer(module)} may import "\
                  f"{sorted(ALLOWED[_layer(module)])})"


def test_nothing_outside_the_cli_imports_it():
  users = sorted(m for m, deps in GRAPH.items()
                 if _layer(m) != "cli" and any(_layer(t) == "cli" for t in deps))
  assert not users


def test_no_import_cycles():
  # Tarjan-free check: a module reaches itself through its imports (package __init__ files
  # count as the modules they are).
  def reach(start):
    seen, stack = set(), list(GRAPH[start])
    while stack:
      m = stack.pop()
      if m == start:
        return True
      if m in seen:
        continue
      seen.add(m)
      stack.extend(GRAPH.get(m, ()))
    return False
  cyclic = sorted(m for m in GRAPH if reach(m))
  assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_no_function_level_imports_of_our_modules():
  assert not NESTED, f"imports of our modules inside functions: {NESTED}"


@pytest.mark.parametrize("package", ["theory", "verify", "figures"])
def test_no_module_over_600_lines(package):
  long = sorted(f"{p.relative_to(ROOT)} ({n})" for p in (ROOT / package).rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 600)
  assert not long
