"""What `bench` and `warm` share: the model and workload flags, and turning them into a worker plan.

A plan is the JSON the parent writes for its worker processes (patcher/bench/worker.py): which model,
device, dtype, shapes and prompts, and how many generate calls.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from patcher import installer
from patcher.bench import models, rope, sharding
from patcher.catalog import patch_names, resolve
from patcher.errors import NotPatched, UsageError
from patcher.locate import Target, find_target
from patcher.policy import check_supported


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (default: the embedded tiny Llama, random weights)")
    model.add_argument(
        "--model-path", "--model_path", dest="model_path",
        help="a Llama checkpoint folder, or a hub id (org/name) whose snapshot is in the local Hugging Face cache "
        "(found offline, as from_pretrained finds it)",
    )
    model.add_argument(
        "--preset", choices=sorted(models.PRESETS), help="random weights of this shape, made on the device"
    )
    model.add_argument(
        "--layers", type=positive, metavar="N",
        help="this many decoder layers instead (the embedded model or a preset), to see compile time grow with depth",
    )
    model.add_argument(
        "--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: float16 on cuda and npu, float32 on cpu",
    )
    model.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "npu"], help="auto: npu, else cuda, else cpu"
    )
    ranks = parser.add_argument_group("tensor parallel (default: one process per mode)")
    ranks.add_argument(
        "--nproc-per-node", type=positive, default=1, metavar="N",
        help="run each mode as N ranks started by torch.distributed.run, each holding 1/N of every decoder "
        "layer (torch's TP API, the Llama plan); Gloo on CPU, NCCL on CUDA (one GPU per rank), HCCL on NPU",
    )
    ranks.add_argument(
        "--collective-timeout", type=positive_float, default=900, metavar="S",
        help="end a multi-rank mode whose ranks wait more than S seconds for each other (900)",
    )


def add_workload_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    work = parser.add_argument_group("workload")
    work.add_argument("--batch-size", type=positive, default=4, help="prompts per generate call (4)")
    work.add_argument("--input-len", type=positive, default=1024, help="prompts are left-padded to this (1024)")
    work.add_argument("--max-new-tokens", type=positive, default=1024, help="exactly this many per call (1024)")
    work.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: the guide's four)")
    decoding = parser.add_argument_group("decoding (default: greedy, as in the guide)")
    decoding.add_argument("--do-sample", action="store_true", help="sample instead of picking the likeliest token")
    decoding.add_argument("--temperature", type=positive_float, help="sampling temperature (transformers' 1.0)")
    decoding.add_argument("--top-k", type=positive, help="sample among the k likeliest tokens (transformers' 50)")
    decoding.add_argument("--top-p", type=probability, help="sample within this probability mass (transformers' 1.0)")
    decoding.add_argument("--seed", type=non_negative, default=0, help="torch.manual_seed before every generate call (0)")
    decoding.add_argument("--num-beams", type=positive, default=1, help="beam search with this many beams (1: none)")
    return work


def decoding_options(args: argparse.Namespace) -> dict:
    """generate()'s decoding arguments from the flags; sampling settings without --do-sample are an error."""
    sampling = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p") if getattr(args, name) is not None}
    if sampling and not args.do_sample:
        flags = ", ".join("--" + name.replace("_", "-") for name in sampling)
        raise UsageError(f"{flags} only apply to sampling: add --do-sample")
    return {"do_sample": args.do_sample, "num_beams": args.num_beams, **sampling}


@dataclass(frozen=True)
class Setup:
    plan: dict  # what every worker gets
    model_name: str  # for reports
    weights: str  # "checkpoint" or "random"
    target: Target  # the transformers the workers import
    patches: list[str]  # what that transformers carries
    warnings: list[str]  # what the user should know before trusting the numbers (the command prints them)


def prepare(args: argparse.Namespace, static_cache: bool, **plan) -> Setup:
    """Check the flags and the installed transformers, build the embedded model if needed, and make the
    plan. `plan` adds the run counts and switches of the command."""
    if args.model_path and args.preset:
        raise UsageError("--model-path and --preset name two different models; give one")
    if args.model_path and args.layers:
        raise UsageError("--layers changes the embedded model or a --preset; a checkpoint keeps its own layers")
    if args.model_path:
        folder = models.checkpoint_folder(args.model_path)
        config, source = models.checkpoint_config(folder, args.model_path), f"{args.model_path}/config.json"
    elif args.preset:
        config, source = models.PRESETS[args.preset], f"--preset {args.preset}"
    else:
        config, source = models.EMBEDDED_CONFIG, "the embedded model"
    max_positions = config.get("max_position_embeddings", 2048)
    if args.nproc_per_node > 1:
        sharding.check_divisible(config, args.nproc_per_node, source)
        require_launcher(args.nproc_per_node)
    if args.input_len + args.max_new_tokens > max_positions:
        raise UsageError(
            f"--input-len {args.input_len} + --max-new-tokens {args.max_new_tokens} = "
            f"{args.input_len + args.max_new_tokens} exceeds the model's max_position_embeddings {max_positions}"
        )
    prompts = read_prompts(args.prompts) if args.prompts else list(models.GUIDE_PROMPTS)
    target, patches = require_patched(static_cache)

    if args.model_path:
        warnings = rope.checkpoint_warnings(config, target.transformers_version, args.model_path)
        model_path = tokenizer_path = str(folder)
        name = args.model_path if folder == Path(args.model_path) else f"{args.model_path} ({folder})"
    else:
        warnings = []
        model_path = tokenizer_path = str(models.embedded_model(layers=None if args.preset else args.layers))
        name = models.EMBEDDED_NAME
        if args.layers and not args.preset:
            name += f", {args.layers} layers"
        if args.preset:  # random weights; the embedded tokenizer only turns the prompts into ids
            layers = f", {args.layers} layers" if args.layers else ""
            real = models.PRESET_NAMES[args.preset]
            model_path, name = None, f"--preset {args.preset}{layers} (random weights in {real}'s shape, not {real})"
    plan = {
        "model_path": model_path,
        "tokenizer_path": tokenizer_path,
        "preset": args.preset,
        "layers": args.layers,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "max_new_tokens": args.max_new_tokens,
        "prompts": prompts,
        "decoding": decoding_options(args),
        "seed": args.seed,
        "nproc_per_node": args.nproc_per_node,
        "collective_timeout_s": args.collective_timeout,
        **plan,
    }
    return Setup(plan, name, "checkpoint" if args.model_path else "random", target, patches, warnings)


def warn(setup: Setup) -> None:
    """The setup's warnings on stderr, as the command line writes apply's, before any mode starts."""
    for warning in setup.warnings:
        print(f"llama-graph-patch: warning: {warning}", file=sys.stderr)


def require_patched(static_cache: bool) -> tuple[Target, list[str]]:
    """The transformers this interpreter imports, refused (exit 3 or 7) unless it carries what the modes need."""
    target = find_target()
    status = installer.inspect(target)
    wanted = patch_names(static_cache)
    if status.state != "patched" or not set(wanted) <= set(status.patches):
        check_supported(target, resolve(wanted))
        fix = "llama-graph-patch apply" + (" --static-cache" if static_cache else "")
        raise NotPatched(
            f"the transformers {target.transformers_version} this command would run ({target.site_packages}) is "
            f"{status.state}{' with ' + '+'.join(status.patches) if status.patches else ''}; run: {fix}"
        )
    return target, status.patches


def require_launcher(ranks: int) -> None:
    """torch.distributed and its launcher, importable by the workers' interpreter (this one), or exit 2."""
    import importlib.util

    try:
        import torch.distributed

        found = torch.distributed.is_available() and importlib.util.find_spec("torch.distributed.run") is not None
    except ImportError as error:
        raise UsageError(f"--nproc-per-node {ranks} needs torch, which this Python cannot import: {error}") from None
    if not found:
        raise UsageError(
            f"--nproc-per-node {ranks} needs torch's launcher torch.distributed.run, which torch {torch.__version__} "
            "lacks here (a build without distributed support); install a torch build with torch.distributed"
        )


def read_prompts(path: str) -> list[str]:
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise UsageError(f"--prompts {path}: {error.strerror}") from None
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in it (one per line)")
    return prompts
