"""What a compiled model is fed, and what it hands back, shaped so that dynamo guards little and compiles
two graphs: prefill and decode."""

import contextlib

import torch
from torch.utils import _pytree


def phase(kwargs):
    """"prefill" or "decode" for a model call's keyword arguments: decode feeds one token per row after the
    first call of a generate call has filled the KV cache."""
    fed = kwargs.get("input_ids")
    if kwargs.get("past_key_values") is None or fed is None or fed.shape[-1] > 1:
        return "prefill"
    return "decode"


def rows_class(kwargs):
    """The batch-size class of a call, "1" or "2+": dynamo compiles apart for one row (it specialises sizes
    0 and 1)."""
    fed = kwargs.get("input_ids")
    fed = kwargs.get("inputs_embeds") if fed is None else fed
    return "1" if fed is None or fed.shape[0] == 1 else "2+"


def model_inputs(args, kwargs, ordinary):
    """The model call's arguments as the compiled model should see them, to keep its guards few.

    A top-level tensor that is a view (decode steps feed `input_ids[:, -1:]`) becomes a compact copy:
    dynamo guards on views, their strides and storage offsets, and for a batch of one those change every
    step. With `ordinary`, every inference tensor, also inside past_key_values, becomes an ordinary copy;
    call it outside inference mode then.
    """

    def top(value):
        if isinstance(value, torch.Tensor):
            if value._base is not None or not value.is_contiguous() or (ordinary and value.is_inference()):
                return value.clone(memory_format=torch.contiguous_format)
            return value
        return without_inference_tensors(value) if ordinary else value

    return tuple(top(value) for value in args), {name: top(value) for name, value in kwargs.items()}


def without_inference_tensors(value):
    """`value` with every inference tensor in it (also inside tuples, lists and dicts) replaced by an
    ordinary copy. Call outside inference mode."""
    return _pytree.tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.is_inference() else leaf, value
    )


def contiguous_cache(outputs):
    """Give the keys and values in `outputs.past_key_values` the layout decode steps hand them out in: the
    prefill graph hands them out in another one, and the second decode step would compile a third graph."""
    past = getattr(outputs, "past_key_values", None)
    if isinstance(past, tuple):
        outputs["past_key_values"] = tuple(tuple(standard_layout(tensor) for tensor in layer) for layer in past)
    elif hasattr(past, "key_cache"):  # transformers' Cache objects (4.36 and later)
        past.key_cache[:] = [standard_layout(tensor) for tensor in past.key_cache]
        past.value_cache[:] = [standard_layout(tensor) for tensor in past.value_cache]


def standard_layout(tensor):
    """`tensor` with the strides of a new contiguous tensor of its shape. contiguous() leaves the stride of a
    dimension of size 1 as it was, and dynamo guards on it: with one key-value head (a tensor-parallel rank's
    share of a grouped-query model, or multi-query attention) the second decode step compiled a third graph."""
    strides, step = [], 1
    for size in reversed(tensor.shape):
        strides.insert(0, step)
        step *= max(size, 1)
    if list(tensor.stride()) == strides:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def sizes_apart():
    """While tracing, a symbol of its own for every dimension of the inputs. dynamo's duck sizing gives
    dimensions of equal size one symbol: where a prompt is as long as the model's head size (64 for
    SmolLM2 and Llama-2-7B), the KV cache's length shares a symbol with its head size, which the attention's
    views make a constant; the first decode graph is then specialised on that length and the next step
    compiles a third graph."""
    try:
        from torch.fx.experimental import _config as config
    except ImportError:  # torch releases before the switch: duck sizing as it was
        return contextlib.nullcontext()
    if not hasattr(config, "use_duck_shape"):
        return contextlib.nullcontext()
    return config.patch(use_duck_shape=False)


def first_line(error):
    """An error as one line: its type and the first line of its message."""
    return "%s: %s" % (type(error).__name__, (str(error).strip().splitlines() or [""])[0])
