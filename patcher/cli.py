"""Command line: a thin layer that parses arguments, calls the installer or the benchmark, and maps
their errors to the exit codes of patcher/errors.py (README.md lists them)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from patcher import __version__, installer
from patcher.cache import describe
from patcher.catalog import labels, patch_names
from patcher.errors import INTERRUPTED, READER_GONE, PatcherError, exit_codes
from patcher.locate import find_target

# Set to anything: an unexpected error prints its traceback (the one switch the tool reads, not the runtime).
DEBUG = "LLAMA_GRAPH_PATCH_DEBUG"

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-graph-patch",
        description="Patch transformers (4.28 to 4.41) so that Llama generation runs in PyTorch graph mode "
        "(torchair on Ascend NPUs, inductor elsewhere), benchmark it, and revert it byte for byte.",
        epilog="exit codes:\n" + "".join(f"  {code:>3}  {text.replace('`', '')}\n" for code, text in exit_codes()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    target = argparse.ArgumentParser(add_help=False)
    where = target.add_argument_group("target (default: the transformers this interpreter imports)")
    choice = where.add_mutually_exclusive_group()
    choice.add_argument("--python", metavar="EXE", help="patch the transformers of another interpreter")
    choice.add_argument("--site-packages", metavar="DIR", help="patch the transformers inside this folder")

    locking = argparse.ArgumentParser(add_help=False)
    locking.add_argument(
        "--lock-timeout", type=float, default=60, metavar="S", help="seconds to wait for a concurrent run (60)"
    )

    apply = commands.add_parser(
        "apply",
        parents=[target, locking],
        help="patch transformers (no-op if already patched)",
        description="Patch generation/utils.py (graph mode and step timing in the decoding methods) and add its "
        "runtime module; with --static-cache also modeling_llama.py and its module (transformers 4.31.0 only). "
        "Running it again is a no-op; with the other patch set it switches; over a patch another version of this "
        "tool wrote it updates that patch.",
    )
    apply.add_argument(
        "--static-cache", action="store_true", help="also give Llama a fixed-size KV cache (static-cache patch)"
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="say what would change; takes no lock and writes nothing"
    )
    apply.add_argument(
        "--allow-untested",
        action="store_true",
        help="apply to a transformers release the patches are not verified on, if every place they edit is found "
        "exactly once (status then says tested: false)",
    )
    apply.set_defaults(run=run_apply)

    revert = commands.add_parser(
        "revert",
        parents=[target, locking],
        help="restore the original files byte for byte",
        description="Restore every patched file from its kept original and verify its SHA-256; delete the "
        "modules apply added.",
    )
    revert.add_argument(
        "--force",
        action="store_true",
        help="restore even if the patched files were changed since apply; delete runtime modules left without a record",
    )
    revert.add_argument(
        "--dry-run", action="store_true", help="say what would change; takes no lock and writes nothing"
    )
    revert.set_defaults(run=run_revert)

    status = commands.add_parser("status", parents=[target], help="say whether transformers is patched")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=run_status)

    diff = commands.add_parser(
        "diff", parents=[target], help="print the unified diff that apply makes (or made)"
    )
    diff.add_argument("--static-cache", action="store_true", help="show the diff of apply --static-cache")
    diff.add_argument(
        "--allow-untested", action="store_true", help="show it for a release the patches are not verified on"
    )
    diff.set_defaults(run=run_diff)

    from patcher.bench.command import add_bench_parser
    from patcher.bench.warm import add_warm_parser

    add_bench_parser(commands)
    add_warm_parser(commands)
    return parser


def run_apply(args: argparse.Namespace) -> int:
    target = find_target(args.python, args.site_packages)
    names = patch_names(args.static_cache)
    outcome = installer.apply(target, names, args.dry_run, args.lock_timeout, args.allow_untested)
    if outcome.warning:
        print(f"llama-graph-patch: warning: {outcome.warning}", file=sys.stderr)
    print(outcome.message)
    return 0


def run_revert(args: argparse.Namespace) -> int:
    target = find_target(args.python, args.site_packages)
    print(installer.revert(target, args.force, args.dry_run, args.lock_timeout).message)
    return 0


def run_status(args: argparse.Namespace) -> int:
    status = installer.inspect(find_target(args.python, args.site_packages), compare=True)
    report = status.as_json()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    applied = f" ({'+'.join(status.patches)})" if status.patches else ""
    print(f"state: {status.state}{applied}")
    print(f"file: {report['file']}")
    for name, entries in file_groups(status.files):
        entry = entries[0]
        count = f" ({len(entries)} files)" if len(entries) > 1 else ""
        print(f"  {name}{count}: {entry['state']} {'+'.join(entry['patches'])}".rstrip())
    for patch, methods in report["methods"].items():
        print(f"{patch}: " + "; ".join(f"{kind}: {', '.join(names)}" for kind, names in methods.items()))
    versions = ", ".join(
        f"{name} {report[name + '_version'] or '-'}" for name in ("transformers", "torch", "torch_npu", "torchair")
    )
    print(f"versions: {versions}{'' if report['supported'] else ' (transformers version not supported)'}")
    if status.record:
        applied = f"applied by: llama-graph-patch {report['applied_tool_version']}"
        if report["up_to_date"] is False:
            applied += f"; this tool ({__version__}) writes other bytes: `llama-graph-patch apply` updates them"
        print(applied)
    if report["tested"] is False:
        print(f"tested: false (applied with --allow-untested to transformers {report['transformers_version']})")
    if status.detail:
        print(f"detail: {status.detail}")
    cache = report["cache"]
    print(f"cache folder: {cache['root']} (compile cache in {cache['compile']}: {cache['compile_files']} files, "
          f"{cache['compile_mb']:.1f} MB)")
    for artifact in cache["artifacts"]:
        print(f"  {describe(artifact)}")
    return 0


def file_groups(files: list[dict]) -> list[tuple[str, list[dict]]]:
    """status's files for a reader: a package the patches add as one line where its files agree."""
    groups: dict[str, list[dict]] = {}
    label = labels([entry["file"] for entry in files])
    for entry in files:
        groups.setdefault(label[entry["file"]], []).append(entry)
    lines = []
    for name, entries in groups.items():
        if len({(entry["state"], tuple(entry["patches"])) for entry in entries}) == 1:
            lines.append((name, entries))
        else:
            lines += [(entry["file"], [entry]) for entry in entries]
    return lines


def run_diff(args: argparse.Namespace) -> int:
    target = find_target(args.python, args.site_packages)
    sys.stdout.write(installer.diff(target, patch_names(args.static_cache), args.allow_untested))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # here rather than at exit, so that a reader gone away is answered below
        return code
    except PatcherError as error:
        print(f"llama-graph-patch: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("llama-graph-patch: interrupted", file=sys.stderr)
        return INTERRUPTED[0]
    except BrokenPipeError:  # `status | head -1`: the reader may stop reading; nothing failed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else the exit's own flush fails again
        return READER_GONE[0]
    except Exception as error:  # the contract: one line and exit 1, never a raw traceback
        if os.environ.get(DEBUG):
            traceback.print_exc()
        print(f"llama-graph-patch: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
