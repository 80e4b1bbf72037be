"""Training methods, one per module, found through the registry in ``haf.methods.base``.

Every module of this package is imported on first registry look-up (``pkgutil``), so adding a method touches
no shared file: write ``haf/methods/<name>.py`` with a class decorated by ``@register_method("<name>")``.
"""
from haf.methods.base import Method, MethodContext, available_methods, get_method, register_method

__all__ = ["Method", "MethodContext", "available_methods", "get_method", "register_method"]
