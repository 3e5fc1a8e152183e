"""Fine-tuning methods, one module each, registered by name (see base.py for the interface).

Every module in this package is imported here, so adding a method means adding a module that
decorates its class with `@register_method`.
"""

import importlib
import pkgutil

from sparsefit.methods.base import (Arch, SparseMethod, count_parameters, freeze_all, get_method,
                                    method_names, register_method)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Arch", "SparseMethod", "count_parameters", "freeze_all", "get_method", "method_names",
           "register_method"]
