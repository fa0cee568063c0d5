"""STAND-IN for Ascend's torchair (tests only, not the real package): records what it is asked."""

STAND_IN = True
received_configs = []  # every CompilerConfig given to get_npu_backend
captured_graphs = []  # every FX graph the backend was asked to compile


def get_npu_backend(compiler_config=None):
    received_configs.append(compiler_config)

    def backend(graph_module, example_inputs):
        captured_graphs.append(graph_module)
        return graph_module.forward  # run the captured graph eagerly: a valid torch.compile backend

    return backend
