"""The patches llama-graph-patch applies, as data.

Each patch names the transformers versions it was written for and its edits. An edit is
(file inside site-packages, codemod, snippet file in this folder). Snippet files are real Python that
the codemods parse with libcst and copy from; nothing here is imported into transformers, and nothing
in a snippet imports this tool, so a patched transformers keeps working after the tool is uninstalled.

Edits to one file run in the order listed. A patch that touches several files is written so that any
mix of patched and original files still runs: the static-cache code in generation/utils.py only
switches on when modeling_llama.py offers `llama_graph_patch_static_cache`, and the code added to
modeling_llama.py only runs for caches that generation/utils.py creates.
"""

PATCHES = (
    {
        "name": "graph-mode",
        "summary": "greedy_search compiles the model (EXE_MODE, GRAPH_MODE) and can time every forward step",
        "transformers": "==4.31.0",
        "requires": (),
        "edits": (
            ("transformers/generation/utils.py", "append-definitions", "graph_mode/runtime.py"),
            ("transformers/generation/utils.py", "append-definitions", "graph_mode/compile_cache.py"),
            ("transformers/generation/utils.py", "append-definitions", "graph_mode/step_timer.py"),
            ("transformers/generation/utils.py", "insert-before-generation-loop", "graph_mode/greedy_search.py"),
            ("transformers/generation/utils.py", "time-forward-call", "graph_mode/greedy_search.py"),
        ),
    },
    {
        "name": "static-cache",
        "summary": "Llama keeps its KV cache in fixed-size tensors written in place, so decode steps keep one shape",
        "transformers": "==4.31.0",
        "requires": ("graph-mode",),
        "edits": (
            ("transformers/models/llama/modeling_llama.py", "append-definitions", "static_cache/modeling_llama_runtime.py"),
            ("transformers/models/llama/modeling_llama.py", "prepend-to-methods", "static_cache/modeling_llama.py"),
            ("transformers/models/llama/modeling_llama.py", "add-methods", "static_cache/modeling_llama.py"),
            ("transformers/generation/utils.py", "append-definitions", "static_cache/generation_utils.py"),
            ("transformers/generation/utils.py", "insert-before-generation-loop", "static_cache/greedy_search.py"),
        ),
    },
)
