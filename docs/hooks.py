"""mkdocs hooks: pages that are generated from the code at build time, so they never go stale.

- ``<!-- nondecoupling:commands -->`` becomes the ``--help`` of every command;
- ``<!-- nondecoupling:statements -->`` becomes the table of every statement `verify` checks;
- ``<!-- nondecoupling:recipes -->`` becomes the table of every recipe and its default config.
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


def _statements() -> str:
  from nondecoupling.verify.registry import all_statements

  rows = ["| statement | formula | source | expected | kind |", "|---|---|---|---|---|"]
  for s in all_statements():
    title = s.title.replace("|", "\\|")
    rows.append(f"| `{s.name}` | {title} | {s.source} | {s.expected} | {s.kind} |")
  return "\n".join(rows)


def _recipes() -> str:
  from nondecoupling.theory.recipes import RECIPES

  rows = ["| recipe | unified form | default config |", "|---|---|---|"]
  for name, r in RECIPES.items():
    cfg = ", ".join(f"{f.name}={getattr(r.config, f.name)!r}"
                    for f in dataclasses.fields(r.config))
    rows.append(f"| `{name}` | {r.summary.replace('|', '/')} | "
                f"`{type(r.config).__name__}({textwrap.shorten(cfg, 400)})` |")
  return "\n".join(rows)


_BLOCKS = {
    "<!-- nondecoupling:commands -->": _commands,
    "<!-- nondecoupling:statements -->": _statements,
    "<!-- nondecoupling:recipes -->": _recipes,
}


def on_page_markdown(markdown, page, config, files):  # noqa: D103 - the mkdocs hook API
  for marker, render in _BLOCKS.items():
    if marker in markdown:
      markdown = markdown.replace(marker, render())
  return markdown
