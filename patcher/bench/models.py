"""The models the benchmark runs: a checkpoint (a folder, or a hub id cached locally), the embedded tiny
Llama, or a random preset.

The embedded model is a real checkpoint folder (config.json, model.safetensors, a sentencepiece
tokenizer.model) built deterministically on first use and loaded through the same from_pretrained path
as a real checkpoint. Its weights are random: reports say so, so nobody reads them as Llama-2 numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import filelock

from patcher import __version__
from patcher.cache import cache_folder
from patcher.errors import UsageError

EMBEDDED_NAME = "llama-graph-patch embedded tiny Llama (random weights, not Llama-2)"

# The guide's accuracy prompts (the seed document's four questions): the benchmark's default prompts.
GUIDE_PROMPTS = (
    "用一句话描述地球为什么是独一无二的。",
    "给出一段对话，使用合适的语气和回答方式继续对话。对话：A：你今天看起来很高兴，发生了什么好事？"
    "B：是的，我刚刚得到一份来自梅西银行的工作通知书。A：哇，恭喜你！你打算什么时候开始工作？"
    "B：下个月开始，所以我现在正为这份工作做准备。",
    "What's your name?",
    "Why is the sky blue?",
)

# Grouped-query attention like Llama-2-70B's, small enough that `make bench` (three modes, two of them
# compiling) fits in 5 minutes on 2 cores. On a CPU a model this small is bound by per-operator host
# overhead, as decode on an accelerator is: the overhead graph mode removes.
EMBEDDED_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
EMBEDDED_VOCAB = 512

# Real checkpoints' shapes, as their public config.json files give them, for --preset (random weights):
# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M) and TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-Chat-v1.0) fit a
# CPU; Llama-2-7B (meta-llama/Llama-2-7b-hf) is for a GPU or NPU. --layers keeps the width and cuts the depth.
PRESET_NAMES = {"smollm2-135m": "SmolLM2-135M", "tinyllama-1.1b": "TinyLlama-1.1B", "llama2-7b": "Llama-2-7B"}
PRESETS = {
    "smollm2-135m": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    },
    "tinyllama-1.1b": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "llama2-7b": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
}

# Text the embedded tokenizer learns its pieces from (written for this project), with the guide's prompts.
TOKENIZER_TEXT = """\
Graph mode compiles the model once and replays the compiled graph for every step of decoding.
Eager mode runs one operator at a time, and the host launches each of them in turn.
A static cache keeps every key and value tensor at the same shape from the first token to the last.
The prefill step reads the whole prompt; each decode step reads one new token and the cache.
Latency is measured per step after the device has finished its queued work.
What is the answer? Why does it take so long? How many tokens per second does it reach?
The weights of this model are random numbers, so its answers are random words.
我们在每一步之后同步设备并记录时间。图模式把模型编译一次，然后重复执行。
"""


def embedded_model(cache_dir: Path | None = None, layers: int | None = None) -> Path:
    """The embedded checkpoint folder, built on first use (under a lock, renamed into place whole).
    `layers` gives it another number of decoder layers (bench --layers)."""
    layers = layers or EMBEDDED_CONFIG["num_hidden_layers"]
    folder = (cache_dir or cache_folder()) / f"embedded-tiny-llama-{recipe_digest(layers)}"
    if (folder / "model.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder) + ".lock"):
        if not (folder / "model.safetensors").exists():
            staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
            try:
                build_embedded_model(staging, layers)
                staging.chmod(0o755)
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return folder


def recipe_digest(layers: int) -> str:
    """Names the cache folder after what the build depends on, so a changed recipe builds anew."""
    import torch

    recipe = [__version__, torch.__version__, EMBEDDED_CONFIG, EMBEDDED_VOCAB, TOKENIZER_TEXT, GUIDE_PROMPTS]
    if layers != EMBEDDED_CONFIG["num_hidden_layers"]:
        recipe.append(layers)
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]


def build_embedded_model(folder: Path, layers: int | None = None) -> None:
    """Write the embedded checkpoint into `folder`: the same bytes on every build with one torch."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    (folder / "tokenizer.model").write_bytes(train_tokenizer(TOKENIZER_TEXT.splitlines() + list(GUIDE_PROMPTS)))
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
            "model_max_length": EMBEDDED_CONFIG["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
        },
    )
    config = LlamaConfig(vocab_size=EMBEDDED_VOCAB, **{**EMBEDDED_CONFIG, "num_hidden_layers": layers or EMBEDDED_CONFIG["num_hidden_layers"]})
    config.architectures = ["LlamaForCausalLM"]
    config.torch_dtype = "float32"
    write_json(folder / "config.json", config.to_dict())
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # The initializer's 0.02 leaves near-uniform logits; a wider spread makes greedy choices decisive.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in sorted(model.named_parameters()):
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.08, generator=generator)
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def train_tokenizer(lines: list[str]) -> bytes:
    """A small byte-fallback BPE sentencepiece model with Llama's special ids (unk 0, bos 1, eos 2)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in lines if line.strip()]),
        model_writer=model,
        vocab_size=EMBEDDED_VOCAB,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return model.getvalue()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def checkpoint_folder(given: str) -> Path:
    """The folder --model-path names, as from_pretrained would find it without network: the folder itself,
    or a hub id's snapshot in the local Hugging Face cache. The workers and the report get that folder, so
    no worker looks anything up on the hub."""
    if Path(given).is_dir():
        return Path(given)
    if not is_hub_id(given):
        raise UsageError(f"--model-path {given}: no such folder")
    return cached_snapshot(given)


def is_hub_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str) -> Path:
    """The snapshot of `repo_id`'s main branch in the cache the running transformers' from_pretrained reads
    (its TRANSFORMERS_CACHE: each release has its own chain of environment variables, 4.31 reads HF_HOME
    but not HF_HUB_CACHE), or a usage error saying how to get it there."""
    from huggingface_hub import snapshot_download
    from transformers.utils.hub import TRANSFORMERS_CACHE

    try:
        return Path(snapshot_download(repo_id, cache_dir=TRANSFORMERS_CACHE, local_files_only=True))
    # huggingface_hub 0.11 (4.28's oldest) raises FileNotFoundError or ValueError; later ones LocalEntryNotFoundError
    except (OSError, ValueError):
        raise UsageError(
            f"--model-path {repo_id}: no such folder, and the Hugging Face cache {TRANSFORMERS_CACHE} holds no "
            f"snapshot of the hub model {repo_id} (models--{repo_id.replace('/', '--')}, branch main); on a machine "
            f"with network run `huggingface-cli download {repo_id}` and copy its cache here (or point HF_HOME at "
            "a copy), or pass the checkpoint's folder"
        ) from None


def checkpoint_config(folder: Path, given: str) -> dict:
    """config.json of a Llama checkpoint folder, or a usage error saying what is wrong with it; `given` is
    what --model-path said (a folder or a hub id)."""
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"--model-path {given}: no config.json in {folder}, not a transformers checkpoint")
    data = json.loads(config.read_text(encoding="utf-8"))
    if data.get("model_type") != "llama":
        raise UsageError(
            f"--model-path {given}: model_type is {data.get('model_type')!r}, not 'llama'; the patches and "
            "this benchmark are for Llama checkpoints"
        )
    return data
