"""What the worker scripts share: a tiny random Llama, and switching the patched transformers' mode."""

import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(kv_heads, vocab_size=99, layers=2, seed=0, pad_token_id=0, spread=None):
    """Two small decoder layers with random weights; `spread`: the weights' standard deviation instead of the
    initializer's, which spreads the logits so that close calls between tokens are rare."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    if spread:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.normal_(0.0, spread)
    return model


def smollm2_135m(layers=2, seed=0):
    """SmolLM2-135M's architecture as its public config.json gives it, cut to `layers` decoder layers, with
    random weights: head size 64, grouped-query attention 9/3, tied embeddings, pad = eos."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
        num_key_value_heads=3, hidden_act="silu", max_position_embeddings=8192, rms_norm_eps=1e-05,
        rope_theta=100000.0, rope_scaling=None, attention_bias=False, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, torch_dtype="float32",
    )
    return LlamaForCausalLM(config).eval()


def enter_mode(mode, timing_dir=None):
    """Set EXE_MODE and GRAPH_MODE for `mode` (eager, max-autotune, reduce-overhead, or reference: unpatched),
    the timing file if asked, and start dynamo's graph count afresh. Returns the timing file or None."""
    from torch._dynamo.utils import counters

    os.environ["EXE_MODE"] = "eager" if mode in ("eager", "reference") else "dynamo"
    os.environ["GRAPH_MODE"] = mode if mode in ("max-autotune", "reduce-overhead") else "max-autotune"
    timing = os.path.join(timing_dir, mode + ".jsonl") if timing_dir else None
    if timing:
        os.environ["LLAMA_GRAPH_PATCH_TIMING"] = timing
    torch._dynamo.reset()
    counters.clear()
    return timing


def timing_records(timing):
    """The step timing records the patched transformers appended to `timing`, if any."""
    if not timing or not os.path.exists(timing):
        return []
    with open(timing) as source:
        return [json.loads(line) for line in source]
