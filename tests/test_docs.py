"""The documentation against the code: generated tables current, the environment variables the runtime reads,
every command, flag and make target the docs name, and the links between the docs."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from helpers import installed_site_packages
from patcher import cli, doc_tables, installer
from patcher.locate import find_target

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "README.md"]
DOCS += sorted((ROOT / "docs").glob("*.md"))
RUNTIME = sorted([*(ROOT / "patches").glob("*/_llama_graph_patch*.py"), *(ROOT / "patches").glob("*/_llama_graph_patch/*.py")])
COMMANDS = ("apply", "revert", "status", "diff", "bench", "warm")
# Flags of other programs that the docs show next to ours, by program.
FOREIGN_FLAGS = {
    "pip": {"--no-deps", "--no-build-isolation", "--force-reinstall", "--upgrade", "--target", "--only-binary"},
    "pip wheel": {"-w"},
    "torchrun / torch.distributed.run": {"--nproc-per-node", "--standalone", "--max-restarts"},
    "pytest": {"--dist"},
}
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
SWITCH = re.compile(r"^(EXE_MODE|GRAPH_MODE|LLAMA_GRAPH_PATCH_[A-Z_]+)$")


def help_text(*command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    return out.getvalue()


@pytest.fixture(scope="module")
def flags_of() -> dict[str, set[str]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # no wrapping inside a flag
        return {command: set(FLAG.findall(help_text(command))) for command in COMMANDS} | {
            "": set(FLAG.findall(help_text()))
        }


def code_lines(text: str) -> list[str]:
    """Inline code spans, and the lines of fenced blocks with their continuation lines joined."""
    lines: list[str] = []
    blocks = re.split(r"^```.*$", text, flags=re.M)
    for index, block in enumerate(blocks):
        if index % 2:  # inside a fence
            for line in block.splitlines():
                if line.startswith(("+", "-", "@@")):  # a diff shows code, not commands
                    continue
                line = re.sub(r"\s#\s.*$", "", line)  # shell comments
                if lines and (line.startswith((" ", "\t")) or lines[-1].endswith("\\")) and line.strip():
                    lines[-1] = lines[-1].rstrip("\\") + " " + line.strip()
                elif line.strip():
                    lines.append(line)
        else:
            lines.extend(re.findall(r"`([^`\n]+)`", block))
    return lines


def command_lines(text: str) -> list[tuple[str, str]]:
    """(command, its arguments) for every `llama-graph-patch COMMAND ...` and every code span that starts
    with a command's name followed by flags (`revert [--force]`)."""
    found = []
    for line in code_lines(text):
        for match in re.finditer(r"llama-graph-patch(?: (\w+))?((?: (?!&&|\||;)[^ ]+)*)", line):
            found.append((match[1] or "", match[2]))
        start = re.match(rf"({'|'.join(COMMANDS)}) (\[?-.*)$", line)
        if start:
            found.append((start[1], start[2]))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_command_and_flag_the_docs_show_exists_in_its_help(path, flags_of):
    text = path.read_text(encoding="utf-8")
    unknown = []
    for command, arguments in command_lines(text):
        if command not in flags_of:
            if command:
                unknown.append(f"llama-graph-patch {command} (no such command)")
            continue
        unknown += [f"{command} {flag}" for flag in FLAG.findall(arguments) if flag not in flags_of[command]]
    ours = set().union(*flags_of.values())
    theirs = set().union(*FOREIGN_FLAGS.values())
    unknown += [flag for flag in set(FLAG.findall(text)) if flag not in ours and flag not in theirs]
    assert not unknown, f"{path.name} names what no --help offers: {sorted(set(unknown))}"


def test_the_bench_synopsis_names_every_flag_of_bench_help(flags_of):
    synopsis = next(
        block for block in re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "benchmark.md").read_text(), re.S)
        if "llama-graph-patch bench [" in block
    )
    missing = flags_of["bench"] - set(FLAG.findall(synopsis)) - {"--help", "--execute-mode", "--graph-mode"}
    assert not missing, f"docs/benchmark.md's synopsis lacks {sorted(missing)}"


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = {
        (path.name, target)
        for path in DOCS
        for line in code_lines(path.read_text(encoding="utf-8"))
        for target in re.findall(r"(?:^|&&|;)\s*make ([a-z][\w-]*)", line.strip())
    }
    assert named, "the docs name no make target at all: the pattern is wrong"
    assert {(name, target) for name, target in named if target not in targets} == set()


def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in headings(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken


def headings(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    titles = re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_generated_tables_are_current(path):
    text = path.read_text(encoding="utf-8")
    assert doc_tables.render(text, str(path)) == text, f"{path.name} is stale: run `make docs`"


def test_the_generated_tables_are_rendered_from_the_code():
    readme, releases = (ROOT / "README.md").read_text(), (ROOT / "docs" / "releases.md").read_text()
    assert "| 5 | a patched file was modified since apply" in readme
    assert "| 4.31.0 | greedy_search, sample, beam_search, beam_sample, group_beam_search, constrained_b" in releases
    stale = readme.replace("| 2 | usage error", "| 2 | usage mistake")
    assert doc_tables.render(stale, "README.md") == readme


def mentioned_switches(path: Path) -> set[str]:
    """Every switch name a module mentions in a string of its own."""
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SWITCH.match(node.value)
    }


def environment_reads(path: Path) -> list[str]:
    """Where a module reads os.environ or os.getenv, as "file:line"."""
    return [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and getattr(node.value, "id", "") == "os"
        and not (isinstance(getattr(node, "ctx", None), ast.Store))
    ]


def test_the_switches_table_lists_every_switch_the_runtime_and_the_command_line_name():
    table = (ROOT / "README.md").read_text().split("<!-- generated: switches -->", 1)[1].split("<!-- end", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    named = set().union(*(mentioned_switches(path) for path in [*RUNTIME, ROOT / "patcher" / "cli.py"]))
    assert {"EXE_MODE", "LLAMA_GRAPH_PATCH_TIMING", "LLAMA_GRAPH_PATCH_PRECOMPILE", "LLAMA_GRAPH_PATCH_DEBUG"} <= named
    assert documented == named, f"documented, never named: {documented - named}; named, undocumented: {named - documented}"


def test_the_runtime_reads_the_environment_in_settings_alone():
    """Every switch is read once per generate call into one Settings; the compile cache only points
    inductor's own variable (TORCHINDUCTOR_CACHE_DIR) at the tool's cache folder."""
    reads = [place for path in RUNTIME if path.name != "settings.py" for place in environment_reads(path)]
    assert reads and all(place.startswith("compile_cache.py:") for place in reads), reads
    source = (ROOT / "patches/graph_mode/_llama_graph_patch/compile_cache.py").read_text()
    assert set(re.findall(r"os\.environ(?:\.get\(|\[)\"(\w+)\"", source)) == {"TORCHINDUCTOR_CACHE_DIR"}


def test_the_diff_in_the_design_doc_is_what_apply_makes_on_this_transformers():
    excerpt = re.search(r"```diff\n(.*?)```", (ROOT / "docs" / "design.md").read_text(), re.S)[1]
    real = installer.diff(find_target(site_packages=str(installed_site_packages())), ["graph-mode"]).splitlines()
    position = 0
    for line in excerpt.splitlines():
        if line == "...":
            continue
        assert line in real[position:], f"docs/design.md's diff shows {line!r}, which apply does not write there"
        position = real.index(line, position) + 1
