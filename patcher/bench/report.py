"""The benchmark's outputs: console table (the guide's columns and more), JSON, Markdown, PNG plot."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from patcher.bench.modes import STATIC_SUFFIX
from patcher.files import atomic_write

COLUMNS = (
    # header, key in a mode's report, format
    ("mode", None, "{}"),
    ("batch", None, "{}"),
    ("prefill ms", "prefill_ms", "{:.2f}"),
    ("decode ms", "decode_ms_mean", "{:.2f}"),
    ("p90 ms", "decode_ms_p90", "{:.2f}"),
    ("tokens/s", "tokens_per_s", "{:.1f}"),
    ("GB/s", "decode_bandwidth_gbs", "{:.1f}"),
    ("of limit", "decode_bandwidth_pct_of_stream", "{:.0f}%"),
    ("memory MB", "peak_memory_mb", "{:.0f}"),
    ("speed-up", "decode_speedup_vs_eager", "{:.2f}x"),
    ("agree", "token_agreement_vs_eager", "{:.0%}"),
    ("compile s", "compile_s", "{:.1f}"),
    ("graphs", "graphs", "{}"),
    ("compile cache", "compile_cache", "{}"),
    ("scope", "scope", "{}"),
)
# Columns whose value differs by rank in a multi-rank mode: shown for every rank, rank 0 first.
PER_RANK = {"graphs": "graphs_per_rank", "peak_memory_mb": "peak_memory_mb_per_rank"}
# The modes the others are compared with (tokens, speed, answers), in order of preference.
EAGER_MODES = ("eager", "eager" + STATIC_SUFFIX)
# Terminal columns a prompt or an answer keeps in the console; the Markdown report has them whole.
CONSOLE_TEXT_COLUMNS = 32
# Characters that Markdown would read as formatting, or as the end of a table cell.
MARKDOWN_SPECIAL = "\\`*_[]<>|~"


def rows(report: dict) -> list[list[str]]:
    batch = str(report["metadata"]["batch_size"])
    table = []
    for mode, numbers in report["modes"].items():
        if numbers["status"] != "ok":
            table.append([mode, batch, f"FAILED: {numbers['error']}"])
            continue
        cells = [mode, batch]
        for _, key, form in COLUMNS[2:]:
            value = numbers.get(key)
            per_rank = numbers.get(PER_RANK.get(key)) or []
            if len(per_rank) > 1:
                cells.append("/".join(form.format(item) for item in per_rank))
            else:
                cells.append("-" if value is None else form.format(value))
        table.append(cells)
    return table


def static_cache_label(report: dict) -> str:
    """off, on, or which modes had it; with the size it preallocated."""
    meta = report["metadata"]
    if not meta["static_cache"]:
        return "off"
    ran = [numbers for numbers in report["modes"].values() if numbers["status"] == "ok"]
    where = "on" if all(numbers["static_cache_mb"] for numbers in ran) else "in the +static modes"
    return f"{where}, {meta['static_cache_mb']:.1f} MB preallocated"


def decoding_label(report: dict) -> str:
    """greedy, sampling with its settings, or beams; with the seed where random numbers are drawn."""
    decoding = dict(report["metadata"]["decoding"])
    beams, sampling, seed = decoding.pop("num_beams"), decoding.pop("do_sample"), decoding.pop("seed")
    parts = []
    if beams > 1:
        parts.append(f"{beams} beams")
    if sampling:
        settings = ", ".join(f"{name} {value}" for name, value in decoding.items())
        parts.append(f"sampling ({settings}, seed {seed})" if settings else f"sampling (seed {seed})")
    return " + ".join(parts) or "greedy"


def ranks_label(report: dict) -> str:
    ranks = report["metadata"].get("world_size", 1)
    return f" | {ranks} ranks, tensor parallel (slowest rank's step times)" if ranks > 1 else ""


def console_table(report: dict) -> str:
    headers = [header for header, _, _ in COLUMNS]
    table = rows(report)
    widths = [max([len(header), *(len(row[i]) for row in table if i < len(row))]) for i, header in enumerate(headers)]
    lines = ["  ".join(header.rjust(width) if i else header.ljust(width) for i, (header, width) in enumerate(zip(headers, widths)))]
    for row in table:
        lines.append("  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row)))
    meta = report["metadata"]
    lines.append(
        f"{meta['model']} | {meta['device']} | {meta['dtype']} | batch {meta['batch_size']}, input {meta['input_len']}, "
        f"new tokens {meta['max_new_tokens']} | {decoding_label(report)} | static cache: {static_cache_label(report)}"
        + ranks_label(report)
    )
    lines += [f"warning: {warning}" for warning in meta.get("warnings", [])]  # again: the run's output scrolled it away
    return "\n".join(lines + console_answers(report))


def markdown(report: dict) -> str:
    meta = report["metadata"]
    headers = [header for header, _, _ in COLUMNS]
    lines = [
        f"# llama-graph-patch bench, {meta['time']}",
        "",
        f"- model: {meta['model']}",
        f"- device: {meta['device']} (host CPU: {meta['host_cpu']})",
        f"- dtype {meta['dtype']}, batch {meta['batch_size']}, input {meta['input_len']} tokens (left-padded), "
        f"{meta['max_new_tokens']} new tokens, {meta['warmup_runs']} warm-up + {meta['runs']} measured run(s)",
        f"- decoding: {decoding_label(report)}",
        *(
            [
                f"- tensor parallel: {meta['world_size']} ranks (torch.distributed.run, torch's TP API); each step's "
                "time is the slowest rank's; graphs and memory are per rank, rank 0 first; memory read per step "
                "is one rank's share"
            ]
            if meta.get("world_size", 1) > 1
            else []
        ),
        f"- patches: {', '.join(meta['patches']) or 'none'}; static cache: {static_cache_label(report)}",
        f"- torch {meta['torch_version']}, transformers {meta['transformers_version']}, python {meta['python']}, "
        f"llama-graph-patch {meta['tool_version']}",
        f"- command: `{meta['command']}`",
        *([f"- written midway: {', '.join(meta['modes_not_run'])} not run yet"] if meta["modes_not_run"] else []),
        *(f"- **warning**: {warning}" for warning in meta.get("warnings", [])),
        "",
        "Prefill is the first step of a generate call, decode the mean of the later steps (device-synchronized). "
        "compile s: the first generate call's time beyond a steady-state call; compile cache: what it held "
        "when the mode started (precompiled: code called without tracing, stored by `warm`).",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows(report):
        lines.append("| " + " | ".join(row + [""] * (len(headers) - len(row))) + " |")
    bandwidth = [bandwidth_line(mode, numbers) for mode, numbers in report["modes"].items()
                 if numbers["status"] == "ok" and numbers["decode_bandwidth_gbs"]]
    if bandwidth:
        lines += [
            "",
            f"Memory read per decode step (weights: {meta['model_bytes'] / 2**20:.0f} MiB, plus keys and values), "
            "against the limit: the median of what the modes' processes streamed just before each measured run (each "
            "the best of 5 reads of a buffer far larger than the last-level cache):",
            *bandwidth,
        ]
    captured = [
        f"- {mode}: {numbers['cuda_graphs']['recorded']} recorded, {numbers['cuda_graphs']['skipped']} compiled graphs not captured"
        for mode, numbers in report["modes"].items()
        if numbers["status"] == "ok" and numbers["cuda_graphs"] and numbers["scope"]  # eager has no scope
    ]
    if captured:
        lines += ["", "CUDA graphs (inductor's cudagraph trees, all calls of the mode):", *captured]
    return "\n".join(lines + markdown_answers(report)) + "\n"


def bandwidth_line(mode: str, numbers: dict) -> str:
    line = f"- {mode}: {numbers['decode_bandwidth_gbs']:.1f} GB/s per decode step"
    if numbers.get("decode_bandwidth_pct_of_stream"):
        line += f", {numbers['decode_bandwidth_pct_of_stream']:.0f}% of the {numbers['stream_bandwidth_gbs']:.1f} GB/s streamed"
    if numbers["decode_bandwidth_pct_of_peak"]:
        line += f", {numbers['decode_bandwidth_pct_of_peak']:.0f}% of the device's peak"
    if numbers.get("frozen") is not None:  # None: eager, or a worker too old to say
        line += "; weights frozen" if numbers["frozen"] else "; weights not frozen"
    return line


def eager_reference(names) -> str | None:
    """Which of `names` (modes that ran) the others are compared with: eager, else eager+static, else none."""
    return next((name for name in EAGER_MODES if name in names), None)


def answered_modes(report: dict) -> list[str]:
    """The modes that ran and have answers: a --preset's random weights make ids its tokenizer cannot spell."""
    return [mode for mode, numbers in report["modes"].items() if numbers["status"] == "ok" and numbers["answers"] is not None]


def answer_reference(report: dict) -> str | None:
    """The mode whose answers the others are compared with: eager where it ran, else the first mode that ran."""
    answered = answered_modes(report)
    return eager_reference(answered) or next(iter(answered), None)


def answer_rows(report: dict, reference: str) -> list[tuple[str, str, dict[str, list[str]]]]:
    """Per batch row: its prompt, the reference mode's answer, and each other answer with the modes that gave it.
    A row equal to an earlier one goes: a batch larger than the prompts repeats them."""
    prompts = report["metadata"]["prompts"]
    others = [mode for mode in answered_modes(report) if mode != reference]
    rows = []
    for index, answer in enumerate(report["modes"][reference]["answers"]):
        differing: dict[str, list[str]] = {}
        for mode in others:
            theirs = report["modes"][mode]["answers"][index]
            if theirs != answer:
                differing.setdefault(theirs, []).append(mode)
        row = (prompts[index % len(prompts)], answer, differing)
        if row not in rows:
            rows.append(row)
    return rows


def answers_title(reference: str) -> str:
    fallback = "" if reference in EAGER_MODES else " (no eager mode ran)"
    return f"Answers: {reference}'s{fallback}, and each mode's that differs from it:"


def console_answers(report: dict) -> list[str]:
    """The answers section of the console report (none without answers), after a blank line."""
    reference = answer_reference(report)
    if reference is None:
        return []
    table = [["prompt", reference, "modes that differ"]]
    for prompt, answer, differing in answer_rows(report, reference):
        others = "; ".join(f"{', '.join(modes)}: {console_text(text)}" for text, modes in differing.items())
        table.append([console_text(prompt), console_text(answer), others or "none"])
    widths = [max(columns(row[i]) for row in table) for i in range(2)]
    lines = [
        "  ".join([*(cell + " " * (width - columns(cell)) for cell, width in zip(row, widths)), row[2]]) for row in table
    ]
    return ["", answers_title(reference), *lines]


def markdown_answers(report: dict) -> list[str]:
    """The answers section of the Markdown report (none without answers), whole and escaped."""
    reference = answer_reference(report)
    if reference is None:
        return []
    lines = ["", answers_title(reference), "", f"| prompt | {reference} | modes that differ |", "|---|---|---|"]
    for prompt, answer, differing in answer_rows(report, reference):
        others = "<br>".join(f"**{', '.join(modes)}**: {markdown_text(text)}" for text, modes in differing.items())
        lines.append(f"| {markdown_text(prompt)} | {markdown_text(answer)} | {others or 'none'} |")
    return lines


def columns(text: str) -> int:
    """Terminal columns `text` takes: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(character) in "WF" else 1 for character in text)


def console_text(text: str) -> str:
    """`text` on one line of at most CONSOLE_TEXT_COLUMNS columns, an ellipsis ending what was cut."""
    text = (text or "(empty)").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if columns(text) <= CONSOLE_TEXT_COLUMNS:
        return text
    kept = ""
    for character in text:
        if columns(kept + character) > CONSOLE_TEXT_COLUMNS - 1:
            break
        kept += character
    return kept + "…"


def markdown_text(text: str) -> str:
    """`text` whole in one table cell, read as plain text: formatting characters escaped, line breaks as <br>."""
    escaped = "".join("\\" + character if character in MARKDOWN_SPECIAL else character for character in text or "(empty)")
    return "<br>".join(escaped.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


# Whole files only: the bench rewrites its reports after every mode, and a reader may be looking.
def write_json(report: dict, path: Path) -> None:
    atomic_write(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))


def write_markdown(report: dict, path: Path) -> None:
    atomic_write(path, markdown(report).encode("utf-8"))


def plot(report: dict, path: Path) -> None:
    """Latency of every step of the last measured run, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    for mode, numbers in report["modes"].items():
        if numbers["status"] == "ok":
            steps = numbers["step_ms"]
            share = numbers.get("decode_bandwidth_pct_of_stream")
            limit = f", decode at {share:.0f}% of the memory bandwidth" if share else ""
            axes.plot(range(1, len(steps)), steps[1:], label=f"{mode} (prefill {steps[0]:.1f} ms{limit})", linewidth=1)
    meta = report["metadata"]
    axes.set_xlabel("decode step")
    axes.set_ylabel("ms per step (device-synchronized)")
    axes.set_title(f"{meta['model']}\n{meta['device']}, batch {meta['batch_size']}, input {meta['input_len']}", fontsize=9)
    axes.set_ylim(bottom=0)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
