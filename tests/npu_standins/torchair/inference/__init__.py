"""STAND-IN for torchair.inference (tests only): `cache_compile` with the real signature (torchair as shipped
in torch_npu 2.14.0, torch_npu/dynamo/torchair/inference/__init__.py), recording what it is asked. The
returned callable runs the method through torch.compile with the stand-in backend; nothing is cached."""

from typing import Callable, Optional

import torch

from torchair import get_npu_backend
from torchair.configs.compiler_config import CompilerConfig

cache_compile_calls = []  # what each call was given


def cache_compile(
    func,
    *,
    config: Optional[CompilerConfig] = None,
    dynamic: bool = True,
    cache_dir: Optional[str] = None,
    global_rank: Optional[int] = None,
    tp_rank: Optional[int] = None,
    pp_rank: Optional[int] = None,
    **kwargs,
) -> Callable:
    cache_compile_calls.append(
        {"func": func, "config": config, "dynamic": dynamic, "cache_dir": cache_dir, "kwargs": kwargs}
    )
    return torch.compile(func, dynamic=dynamic, fullgraph=True, backend=get_npu_backend(compiler_config=config))
