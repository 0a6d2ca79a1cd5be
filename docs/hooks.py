"""mkdocs hooks: pages that are generated from the code at build time, so they never go stale.

- ``<!-- nondecoupling:commands -->`` becomes the ``--help`` of every command;
- ``<!-- nondecoupling:statements -->`` becomes the table of every statement `verify` checks;
- ``<!-- nondecoupling:tree-statements -->`` becomes the table of the token-level statements
  (G1–G4, ``verify/tree_checks.py``);
- ``<!-- nondecoupling:recipes -->`` becomes the table of every recipe and its default config;
- ``<!-- nondecoupling:tree-recipes -->`` becomes the table of every recipe on trees
  (``theory/tree/recipes/registry.TREE_RECIPES``), or a line saying none is registered yet.
"""

from __future__ import annotations

import dataclasses
import pathlib
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_VIEW = ROOT / "build" / "docs-package"  # mkdocs.yml points mkdocstrings here


def on_startup(command, dirty):  # noqa: D103 - the mkdocs hook API (runs before any plugin)
  # The package's sub-packages live at the top of the repository (theory/, verify/, figures/) and
  # are mapped into `nondecoupling` when installed; give the API reader the installed layout.
  view = PACKAGE_VIEW / "nondecoupling"
  view.mkdir(parents=True, exist_ok=True)
  links = {"__init__.py": ROOT / "src" / "nondecoupling" / "__init__.py",
           "theory": ROOT / "theory", "verify": ROOT / "verify", "figures": ROOT / "figures"}
  for name, target in links.items():
    link = view / name
    if not link.is_symlink():
      link.symlink_to(target)



def _commands() -> str:
  from nondecoupling.verify.cli.parser import build_parser

  parser = build_parser()
  out = ["```text", parser.format_help().rstrip(), "```", ""]

  def walk(p, prefix):
    for action in p._actions:
      choices = getattr(action, "choices", None)
      if isinstance(choices, dict):
        for name, sub in choices.items():
          full = f"{prefix} {name}"
          nested = any(isinstance(getattr(a, "choices", None), dict) for a in sub._actions)
          if not nested:
            out.extend([f"### `{full}`", "", "```text", sub.format_help().rstrip(), "```", ""])
          walk(sub, full)

  walk(parser, "nondecoupling")
  return "\n".join(out)


def _statement_table(statements) -> str:
  rows = ["| statement | formula | source | expected | kind |", "|---|---|---|---|---|"]
  for s in statements:
    title = s.title.replace("|", "\\|").replace("*", "\\*")
    rows.append(f"| `{s.name}` | {title} | {s.source} | {s.expected} | {s.kind} |")
  return "\n".join(rows)


def _statements() -> str:
  from nondecoupling.verify.registry import all_statements

  return _statement_table(all_statements())


def _tree_statements() -> str:
  from nondecoupling.verify.tree_checks import TREE_STATEMENTS

  return _statement_table(TREE_STATEMENTS)


def _recipes() -> str:
  from nondecoupling.theory.recipes import RECIPES

  rows = ["| recipe | unified form | default config |", "|---|---|---|"]
  for name, r in RECIPES.items():
    rows.append(f"| `{name}` | {r.summary.replace('|', '/')} | {_config_text(r.config)} |")
  return "\n".join(rows)


def _config_text(config) -> str:
  cfg = ", ".join(f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config))
  return f"`{type(config).__name__}({textwrap.shorten(cfg, 400)})`"


def _tree_recipes() -> str:
  from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES

  if not TREE_RECIPES:
    return ("*No recipe is registered on trees in this build yet: the table fills in from "
            "`TREE_RECIPES` as recipe modules are added.*")
  rows = ["| recipe | at the token level | published source | default config |",
          "|---|---|---|---|"]
  for name, r in TREE_RECIPES.items():
    rows.append(f"| `{name}` | {r.summary.replace('|', '/')} | {r.reference.replace('|', '/')} | "
                f"{_config_text(r.config)} |")
  return "\n".join(rows)


_BLOCKS = {
    "<!-- nondecoupling:commands -->": _commands,
    "<!-- nondecoupling:statements -->": _statements,
    "<!-- nondecoupling:tree-statements -->": _tree_statements,
    "<!-- nondecoupling:recipes -->": _recipes,
    "<!-- nondecoupling:tree-recipes -->": _tree_recipes,
}


def on_page_markdown(markdown, page, config, files):  # noqa: D103 - the mkdocs hook API
  for marker, render in _BLOCKS.items():
    if marker in markdown:
      markdown = markdown.replace(marker, render())
  return markdown
