"""The documentation kept in step with the code: every flag the parser knows is in the command
reference under its subcommand, the README stays short and links only pages that exist, the layout
in docs/architecture.md names every module, docs/results.md names every run.json field, and no page
tells the story of how the project was made. Plain file reads and one in-process parser: fast."""

from __future__ import annotations

import argparse
import ast
import functools
import re
from pathlib import Path

from harness.cli import build_parser
from tests.helpers import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200
# How a page would speak of the project's own history instead of what is. "session" alone is
# not here: a `Session` holds a run's resources and TLS resumes sessions; "this session" is history.
HISTORY = re.compile(
    r"\bthis round\b|\bnext round\b|\bround \d+\b|\bissue #?\d+\b|\bfirst try\b|\btries\b"
    r"|\bthis session\b|\bcame first\b|\bbefore the fix\b|\bwe (?:tried|fixed)\b",
    re.IGNORECASE)
HEADING = re.compile(r"^(#{2,3}) +(.+?) *$", re.MULTILINE)
SECTION_NAME = re.compile(r"^`?harness ([\w-]+)(?: ([\w-]+))?`?$")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@functools.cache
def commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every subcommand and sub-subcommand (`hosts up`, `bench echo`) of `harness`, by its path."""
    out = {}
    for name, parser in subparsers(build_parser()).items():
        out[(name,)] = parser
        for sub, subparser in subparsers(parser).items():
            out[(name, sub)] = subparser
    return out


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for action in parser._actions if not isinstance(action, argparse._HelpAction)
            for o in action.option_strings]


def sections(text: str) -> dict[tuple[str, ...], str]:
    """docs/commands.md's sections by the command they name: a `## harness X` section runs to the
    next `##` (its `### harness X Y` subsections included), a `###` one to the next heading.
    A heading that names no command is returned under ("?", heading) for the test to refuse."""
    heads = list(HEADING.finditer(text))
    out = {}
    for i, head in enumerate(heads):
        level = len(head.group(1))
        end = next((h.start() for h in heads[i + 1:] if len(h.group(1)) <= level), len(text))
        name = SECTION_NAME.match(head.group(2))
        key = tuple(g for g in name.groups() if g) if name else ("?", head.group(2))
        if name and len(key) != level - 1:  # `## harness hosts up` or `### harness run` is misplaced
            key = ("?", head.group(2))
        out[key] = text[head.start():end]
    return out


def mentions(text: str, flag: str) -> bool:
    """`--hold` as itself: not the start of `--hold-time`, nor the end of `--no-hold`."""
    return re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text) is not None


def test_every_section_of_the_command_reference_names_a_real_subcommand():
    found = sections((DOCS / "commands.md").read_text())
    unknown = [key[1] if key[0] == "?" else " ".join(key) for key in found if key not in commands()]
    assert not unknown, f"docs/commands.md has sections for no subcommand of `harness`: {unknown}"


def test_every_flag_of_every_subcommand_is_in_its_section_of_the_command_reference():
    found = sections((DOCS / "commands.md").read_text())
    missing_sections = [" ".join(path) for path in commands() if path not in found]
    assert not missing_sections, f"docs/commands.md has no section for: harness {missing_sections}"
    missing = {" ".join(path): [o for o in options(parser) if not mentions(found[path], o)]
               for path, parser in commands().items()}
    missing = {path: flags for path, flags in missing.items() if flags}
    assert not missing, f"flags that --help prints and docs/commands.md does not list there: {missing}"


def test_the_flag_matcher_tells_a_flag_from_a_longer_one():
    assert mentions("- `--hold HOLD`: seconds", "--hold")
    assert not mentions("- `--hold-time S`", "--hold") and not mentions("`--no-hold`", "--hold")


def test_the_readme_is_short_and_links_only_pages_that_exist():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES}"
    linked = set(re.findall(r"\bdocs/[\w.-]+\.md\b", README.read_text()))
    assert linked, "README.md links no page of docs/"
    assert not [p for p in linked if not (ROOT / p).is_file()], f"README.md links pages that do not exist: " \
        f"{sorted(p for p in linked if not (ROOT / p).is_file())}"
    unlisted = sorted(f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked)
    assert not unlisted, f"README.md's index of docs/ lacks: {unlisted}"


def test_every_page_mentioned_in_the_docs_exists():
    broken = {page.name: sorted(p for p in set(re.findall(r"\bdocs/[\w.-]+\.md\b", page.read_text()))
                                if not (ROOT / p).is_file()) for page in pages()}
    assert not {k: v for k, v in broken.items() if v}, f"pages that mention missing docs: {broken}"


def test_no_page_tells_how_the_project_was_made():
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for page in pages()
             for n, line in enumerate(page.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not found, "say what is, in the present tense; measurements go to docs/benchmarks.md:\n" + "\n".join(found)


def test_the_history_words_are_caught():
    assert HISTORY.search("This round cut four syscalls") and HISTORY.search("see issue 15")
    assert HISTORY.search("Two tries at the million") and not HISTORY.search("a `Session` enters the hosts")


def test_the_layout_names_every_module_and_only_modules_that_exist():
    text = (DOCS / "architecture.md").read_text()
    layout = text[text.index("\n## Layout"):]
    modules = {str(p.relative_to(ROOT)) for top in ("harness", "scenarios", "servers")
               for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    listed = set(re.findall(r"`((?:harness|scenarios|servers)/[\w/]+\.py)`", layout))
    assert not sorted(modules - listed), f"docs/architecture.md's layout lacks: {sorted(modules - listed)}"
    assert not sorted(listed - modules), f"docs/architecture.md's layout names modules that do not exist: " \
        f"{sorted(listed - modules)}"


def run_json_keys() -> list[str]:
    """The top-level keys of the document `build_document` returns, read from its source."""
    tree = ast.parse((ROOT / "harness" / "core" / "rundoc.py").read_text())
    build = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "build_document")
    doc = next(n.value for n in ast.walk(build) if isinstance(n, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "doc" for t in n.targets))
    return [k.value for k in doc.keys if isinstance(k, ast.Constant)]


def test_the_results_page_names_every_field_of_run_json():
    keys = run_json_keys()
    assert "peak_connections" in keys and "diagnosis" in keys and len(keys) > 30
    text = (DOCS / "results.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"docs/results.md does not describe these run.json fields: {missing}"
