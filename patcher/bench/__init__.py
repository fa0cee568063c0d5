"""`llama-graph-patch bench`: eager, max-autotune and reduce-overhead, each in its own process."""
