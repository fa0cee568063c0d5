"""The tables in README.md and docs/ that restate code, rendered from that code so they cannot drift.

A table sits between `<!-- generated: NAME -->` and `<!-- end generated -->`. `make docs` (this module's
main) rewrites every such block; `--check` only says which are stale, and tests/test_docs.py runs it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from patcher.catalog import load_catalog
from patcher.cli import DEBUG
from patcher.errors import exit_codes

BLOCK = re.compile(
    r"(?P<start><!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(?P<end><!-- end generated -->)", re.S
)


def cell(text: str) -> str:
    """`text` inside a Markdown table cell, where `|` would end the cell even inside backticks."""
    return text.replace("|", r"\|")


def exit_code_table() -> str:
    rows = [f"| {code} | {cell(meaning)} |" for code, meaning in exit_codes()]
    return "\n".join(["| code | meaning |", "|---|---|", *rows]) + "\n"


def release_table() -> str:
    """Per transformers release: which decoding methods each patch compiles, runs eager or serves with which cache."""
    catalog = load_catalog()
    graph_mode, static_cache = catalog["graph-mode"], catalog["static-cache"]
    rows = []
    for release in graph_mode.releases:
        (methods,) = graph_mode.method_layouts(release)
        if static_cache.verified_on(release):
            (cache,) = static_cache.method_layouts(release)
            static = f"static: {', '.join(cache['static'])}; growing: {', '.join(cache['growing'])}"
        else:
            static = "-"
        rows.append(f"| {release} | {', '.join(methods['compiled'])} | {', '.join(methods['eager'])} | {static} |")
    header = ["| release | compiled, timed | eager, with a WARNING | static-cache patch |", "|---|---|---|---|"]
    return "\n".join([*header, *rows]) + "\n"


# Where the README says more about a switch.
SWITCH_LINKS = {"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": "docs/compile-time.md", "LLAMA_GRAPH_PATCH_MAX_GRAPHS": "docs/serving.md"}


def switch_table() -> str:
    """The run-time switches, from the runtime's own list of them, and the one the command line reads."""
    from patches.graph_mode._llama_graph_patch.settings import SWITCHES

    rows = []
    for switch in SWITCHES:
        values = [f"`{value}`" + (f": {meaning}" if meaning else "") for value, meaning in switch.choices]
        text = ("; " if any(meaning for _, meaning in switch.choices) else ", ").join(values)
        text = ": ".join(part for part in (text, switch.meaning) if part)
        if switch.variable in SWITCH_LINKS:
            text += f" ([{SWITCH_LINKS[switch.variable]}]({SWITCH_LINKS[switch.variable]}))"
        default = switch.default_meaning or f"`{switch.default}`"
        rows.append(f"| `{switch.variable}` | {cell(text)} | {cell(default)} |")
    rows.append(f"| `{DEBUG}` | set: the command line prints the traceback of an unexpected error (read by the tool, "
                "not the runtime) | unset |")
    return "\n".join(["| variable | values | default |", "|---|---|---|", *rows]) + "\n"


TABLES = {"exit-codes": exit_code_table, "releases": release_table, "switches": switch_table}


def render(text: str, source: str) -> str:
    """`text` with every generated block rewritten; an unknown block name is an error naming `source`."""

    def rewrite(block: re.Match) -> str:
        name = block["name"]
        if name not in TABLES:
            raise ValueError(f"{source}: unknown generated block {name!r}; known: {', '.join(TABLES)}")
        return block["start"] + TABLES[name]() + block["end"]

    return BLOCK.sub(rewrite, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patcher.doc_tables", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="Markdown files holding generated blocks")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the stale files")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        fresh = render(text, str(path))
        if fresh != text:
            stale.append(path)
            if not args.check:
                path.write_text(fresh, encoding="utf-8")
    if args.check and stale:
        print(f"stale generated tables in {', '.join(map(str, stale))}: run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
