"""STAND-IN for torchair.configs.compiler_config (tests only): the attributes the guide sets, with the
real package's defaults."""

from types import SimpleNamespace


class CompilerConfig:
    def __init__(self):
        self.mode = "max-autotune"
        self.experimental_config = SimpleNamespace(frozen_parameter=False)
        self.debug = SimpleNamespace(aclgraph=SimpleNamespace(disable_reinplace_inplaceable_ops_pass=False))
