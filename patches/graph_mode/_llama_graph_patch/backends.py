"""Which torch.compile backend a graph mode takes on each device: torchair on an NPU, as the Ascend guide
configures it; inductor on cuda and cpu."""

import torch

# torchair's max-autotune compiles the whole graph ahead (GE); reduce-overhead captures it once and
# replays it (aclgraph). The inductor modes closest in meaning (on a CPU, reduce-overhead takes inductor's
# C++ wrapper instead, see backend_options):
INDUCTOR_MODES = {"max-autotune": "default", "reduce-overhead": "reduce-overhead"}


def backend_options(settings, device_type, scope="model", sharded=False):
    """torch.compile's backend options for settings.graph_mode on this device, and how to name them in logs.
    `sharded`: the model is split over several ranks (tensor parallel)."""
    graph_mode = settings.graph_mode
    if device_type == "npu":
        if sharded:
            collectives_for_torchair()
        return {"backend": torchair_backend(graph_mode)}, "torchair (%s)" % graph_mode
    if (
        device_type == "cpu"
        and graph_mode == "reduce-overhead"
        and settings.inductor_mode is None
        and not torch_older_than(torch.__version__, (2, 5))
        and scope != "region"  # the C++ wrapper has no code for invoke_subgraph (torch 2.13, 2.14)
        # nor for a sharded model's graph, which takes its DeviceMesh as an input (`TypeError: object of type
        # 'DeviceMesh' has no len()` on every call, torch 2.13)
        and not sharded
    ):
        # A CPU has no graphs to capture; the per-step host overhead that capture removes on a device is,
        # on a CPU, Python launching each kernel. Inductor's C++ wrapper launches them from compiled code.
        return {"backend": "inductor", "options": {"cpp_wrapper": True}}, "inductor (mode=default, cpp_wrapper=True)"
    inductor_mode = settings.inductor_mode or INDUCTOR_MODES[graph_mode]
    return {"backend": "inductor", "mode": inductor_mode}, "inductor (mode=%s)" % inductor_mode


def collectives_for_torchair():
    """torchair converts torch's traceable collectives (what a sharded model's graph holds) from torch 2.3.1
    on; before that its patch_for_hcom makes torch.distributed's collectives enter the graph (torchair's
    guide, "collective communication in the graph")."""
    if torch_older_than(torch.__version__, (2, 3, 1)):
        import torchair

        torchair.patch_for_hcom()


def torchair_backend(graph_mode):
    """The torchair backend exactly as the Ascend guide configures it."""
    config = torchair_config(graph_mode)  # first: it says what to do where torchair is missing
    import torchair

    return torchair.get_npu_backend(compiler_config=config)


def torchair_config(graph_mode):
    """torchair's CompilerConfig as the Ascend guide sets it for the graph mode."""
    try:
        # Only on an NPU: torchair is not on PyPI, and elsewhere it is absent.
        from torchair.configs.compiler_config import CompilerConfig
    except ImportError as error:
        raise ImportError(
            "llama-graph-patch: the model is on an NPU and EXE_MODE=dynamo needs torchair, which could not be "
            "imported (%s). Install torchair for your torch_npu (https://gitee.com/ascend/torchair) or run with "
            "EXE_MODE=eager." % error
        ) from error
    config = CompilerConfig()
    if graph_mode == "reduce-overhead":
        config.mode = "reduce-overhead"
        if torch_older_than(torch.__version__, (2, 5)):
            # torch < 2.5 can fail in the reinplace_inplaceable_ops pass (the guide's workaround).
            config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass = True
    config.experimental_config.frozen_parameter = True
    return config


def torch_older_than(version, major_minor):
    """Compare "2.1.0+cpu"-style versions without packaging, which the target may lack; `major_minor` may
    name a patch release too."""
    parts = []
    for piece in version.split(".")[: len(major_minor)]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    return tuple(parts) < tuple(major_minor)
