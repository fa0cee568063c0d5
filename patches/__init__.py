"""The patches llama-graph-patch applies, as data.

Each patch names the transformers versions it was written for and its edits. An edit is
(file inside site-packages, codemod, snippet file in this folder[, decoding methods it edits]). Snippet
files are real Python that the codemods parse with libcst and copy from; nothing here is imported into
transformers, and nothing in a snippet imports this tool, so a patched transformers keeps working after
the tool is uninstalled.

Edits to one file run in the order listed. A patch that touches several files is written so that any
mix of patched and original files still runs: the static-cache code in generation/utils.py only
switches on when modeling_llama.py offers `llama_graph_patch_static_cache`, and the code added to
modeling_llama.py only runs for caches that generation/utils.py creates.
"""

# generate()'s decoding methods in transformers 4.31.0. These run one forward pass per step at the top level
# of one `while True:` loop: they get the compile block and the timing points.
COMPILED_METHODS = (
    "greedy_search",
    "sample",
    "beam_search",
    "beam_sample",
    "group_beam_search",
    "constrained_beam_search",
)
# These do not: contrastive_search runs a second forward pass for the prompt inside its loop, and
# assisted_decoding runs an assistant model with candidate lengths that change every step. Under
# EXE_MODE=dynamo they run eager and say so.
EAGER_METHODS = ("contrastive_search", "assisted_decoding")
# The static KV cache serves methods whose rows keep their places; beam searches reorder the cache every
# step, so they keep transformers' growing cache and say so.
STATIC_CACHE_METHODS = ("greedy_search", "sample")
GROWING_CACHE_METHODS = ("beam_search", "beam_sample", "group_beam_search", "constrained_beam_search")

UTILS = "transformers/generation/utils.py"
MODELING = "transformers/models/llama/modeling_llama.py"

PATCHES = (
    {
        "name": "graph-mode",
        "summary": "the decoding methods compile the model (EXE_MODE, GRAPH_MODE) and can time every forward step",
        "transformers": "==4.31.0",
        "requires": (),
        "methods": {"compiled": COMPILED_METHODS, "eager, with a warning": EAGER_METHODS},
        "edits": (
            (UTILS, "append-definitions", "graph_mode/runtime.py"),
            (UTILS, "append-definitions", "graph_mode/compile_cache.py"),
            (UTILS, "append-definitions", "graph_mode/step_timer.py"),
            (UTILS, "insert-before-generation-loop", "graph_mode/generation_loop.py", COMPILED_METHODS),
            (UTILS, "time-forward-call", "graph_mode/generation_loop.py", COMPILED_METHODS),
            (UTILS, "insert-at-method-start", "graph_mode/eager_methods.py", EAGER_METHODS),
        ),
    },
    {
        "name": "static-cache",
        "summary": "Llama keeps its KV cache in fixed-size tensors written in place, so decode steps keep one shape",
        "transformers": "==4.31.0",
        "requires": ("graph-mode",),
        "methods": {"static cache": STATIC_CACHE_METHODS, "growing cache, with a warning": GROWING_CACHE_METHODS},
        "edits": (
            (MODELING, "append-definitions", "static_cache/modeling_llama_runtime.py"),
            (MODELING, "prepend-to-methods", "static_cache/modeling_llama.py"),
            (MODELING, "add-methods", "static_cache/modeling_llama.py"),
            (UTILS, "append-definitions", "static_cache/generation_utils.py"),
            (UTILS, "insert-before-generation-loop", "static_cache/generation_loop.py", STATIC_CACHE_METHODS),
            (UTILS, "insert-at-method-start", "static_cache/beam_methods.py", GROWING_CACHE_METHODS),
        ),
    },
)
