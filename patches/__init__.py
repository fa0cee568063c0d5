"""The patches llama-graph-patch applies, as data.

Each patch names the transformers releases it is verified on, where those releases keep the decoding
methods it edits, the runtime it adds and its edits. An addition is (file or package folder inside
site-packages, module file or package folder in this folder), copied byte for byte (a package: each of its
.py files). An edit is (file inside site-packages, codemod, snippet
file in this folder[, which decoding methods it edits: a key of the patch's "methods"]). Snippet files are
real Python that the codemods parse with libcst and copy from. Nothing here is imported into
transformers, and nothing copied imports this tool, so a patched transformers keeps working after the
tool is uninstalled.

The edits are hook lines and one import of the patch's runtime; the code they call lives there. Edits to
one file run in the order listed: the static-cache patch's lines before a generation loop come after the
graph-mode patch's, which hand them the runner. Written files are committed in an order that keeps every
import working (added modules first, a package's __init__.py last among them, removed ones last), and the
static KV cache in generation/utils.py only switches on when modeling_llama.py's LlamaForCausalLM offers
`llama_graph_patch_kv_cache`.
"""

# Every transformers release the graph-mode patch is verified on, one by one (tests/test_releases.py):
# all patch releases from 4.28.0 through 4.41.2.
GRAPH_MODE_RELEASES = (
    "4.28.0", "4.28.1", "4.29.0", "4.29.1", "4.29.2", "4.30.0", "4.30.1", "4.30.2", "4.31.0", "4.32.0", "4.32.1",
    "4.33.0", "4.33.1", "4.33.2", "4.33.3", "4.34.0", "4.34.1", "4.35.0", "4.35.1", "4.35.2", "4.36.0", "4.36.1",
    "4.36.2", "4.37.0", "4.37.1", "4.37.2", "4.38.0", "4.38.1", "4.38.2", "4.39.0", "4.39.1", "4.39.2", "4.39.3",
    "4.40.0", "4.40.1", "4.40.2", "4.41.0", "4.41.1", "4.41.2",
)

# Where generate()'s decoding methods live, per range of releases, by what the patches do with them:
# - compiled: one generation loop at the top level of the method (`while True:`, from 4.39
#   `while self._has_unfinished_sequences(...)`), with one top-level statement in it that runs the forward
#   pass (`outputs = self(...)`; from 4.38 beam search's sits in an if/else for its low_memory option). They
#   get the compile block and the timing points.
# - eager: contrastive_search runs a second forward pass for the prompt inside its loop, and
#   assisted_decoding (from 4.29) an assistant model with candidate lengths that change every step. Under
#   EXE_MODE=dynamo they run eager and say so.
# From 4.39 the methods are private (the public names forward to them); in 4.41 greedy search runs in
# _sample and beam sampling in _beam_search.
DECODING_METHODS = (
    (">=4.28,<4.29", {
        "compiled": ("greedy_search", "sample", "beam_search", "beam_sample", "group_beam_search", "constrained_beam_search"),
        "eager": ("contrastive_search",),
    }),
    (">=4.29,<4.39", {
        "compiled": ("greedy_search", "sample", "beam_search", "beam_sample", "group_beam_search", "constrained_beam_search"),
        "eager": ("contrastive_search", "assisted_decoding"),
    }),
    (">=4.39,<4.41", {
        "compiled": ("_greedy_search", "_sample", "_beam_search", "_beam_sample", "_group_beam_search", "_constrained_beam_search"),
        "eager": ("_contrastive_search", "_assisted_decoding"),
    }),
    (">=4.41,<4.42", {
        "compiled": ("_sample", "_beam_search", "_group_beam_search", "_constrained_beam_search"),
        "eager": ("_contrastive_search", "_assisted_decoding"),
    }),
)
# The static KV cache is written for transformers 4.31.0's Llama (from 4.36 Llama's cache is a Cache object;
# from 4.38 transformers has a static cache of its own). It serves methods whose rows keep their places;
# beam searches reorder the cache every step, so they keep transformers' growing cache and say so.
STATIC_CACHE_METHODS = (
    ("==4.31.0", {
        "static": ("greedy_search", "sample"),
        "growing": ("beam_search", "beam_sample", "group_beam_search", "constrained_beam_search"),
    }),
)

UTILS = "transformers/generation/utils.py"
MODELING = "transformers/models/llama/modeling_llama.py"
GRAPH_MODE_RUNTIME = "transformers/generation/_llama_graph_patch"
KV_CACHE_RUNTIME = "transformers/models/llama/_llama_graph_patch_kv_cache.py"
# The modules earlier releases of the tool added (0.2.0: the runtime as two modules, the static KV cache
# under another name): an update from such a release deletes them, and status finds them left behind.
RETIRED = (
    "transformers/generation/_llama_graph_patch.py",
    "transformers/generation/_llama_graph_patch_cache.py",
    "transformers/models/llama/_llama_graph_patch_static_cache.py",
)

PATCHES = (
    {
        "name": "graph-mode",
        "summary": "the decoding methods compile the model (EXE_MODE, GRAPH_MODE) and can time every forward step",
        "releases": GRAPH_MODE_RELEASES,
        "requires": (),
        "methods": DECODING_METHODS,
        "adds": ((GRAPH_MODE_RUNTIME, "graph_mode/_llama_graph_patch"),),
        "edits": (
            (UTILS, "insert-imports", "graph_mode/imports.py"),
            (UTILS, "insert-before-generation-loop", "graph_mode/generation_loop.py", "compiled"),
            (UTILS, "time-forward-call", "graph_mode/generation_loop.py", "compiled"),
            (UTILS, "insert-at-method-start", "graph_mode/eager_methods.py", "eager"),
        ),
    },
    {
        "name": "static-cache",
        "summary": "Llama keeps its KV cache in fixed-size tensors written in place, so decode steps keep one shape",
        "releases": ("4.31.0",),
        "requires": ("graph-mode",),
        "methods": STATIC_CACHE_METHODS,
        "adds": ((KV_CACHE_RUNTIME, "static_cache/_llama_graph_patch_kv_cache.py"),),
        "edits": (
            (MODELING, "insert-imports", "static_cache/imports.py"),
            (MODELING, "prepend-to-methods", "static_cache/modeling_llama.py"),
            (MODELING, "add-methods", "static_cache/modeling_llama.py"),
            (UTILS, "insert-before-generation-loop", "static_cache/generation_loop.py", "static"),
            (UTILS, "insert-before-generation-loop", "static_cache/beam_methods.py", "growing"),
        ),
    },
)
