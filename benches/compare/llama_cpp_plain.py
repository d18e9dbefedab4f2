"""Loads a model with llama-cpp-python on plain CPU buffers, on every CPU the comparison runs on.

llama.cpp's "extra buffer types" (the AMX repacking path on Intel Xeons with AMX, other repacked
layouts elsewhere) crash on some virtual machines ("Illegal instruction"), and the figures compare
plain CPU kernels anyway. `Llama(use_extra_bufts=False, ...)` does not reach the model parameters in
llama-cpp-python 0.3.36: `Llama.__init__` builds them from `llama_model_default_params()` and never
copies that keyword over. So the default-params function itself is wrapped, for the duration of the
load, to return parameters with `use_extra_bufts = False`; the load then checks that the model was
created with them. Every llama.cpp peer loads through `load_llama`.
"""
import contextlib

import llama_cpp
import llama_cpp.llama_cpp as lowlevel
from llama_cpp import Llama


@contextlib.contextmanager
def _plain_default_params():
    original = lowlevel.llama_model_default_params

    def plain():
        params = original()
        if any(name == "use_extra_bufts" for name, *_ in type(params)._fields_):
            params.use_extra_bufts = False
        return params

    patched = [(lowlevel, "llama_model_default_params")]
    if getattr(llama_cpp, "llama_model_default_params", None) is original:
        patched.append((llama_cpp, "llama_model_default_params"))
    for module, name in patched:
        setattr(module, name, plain)
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, original)


def load_llama(**kwargs) -> Llama:
    """`Llama(**kwargs)` with `use_extra_bufts = False` in the model parameters (see the module docs)."""
    with _plain_default_params():
        llm = Llama(**kwargs)
    params = getattr(llm, "model_params", None)
    if params is not None and getattr(params, "use_extra_bufts", False):
        raise RuntimeError("llama.cpp model was created with use_extra_bufts enabled")
    return llm
