"""User code named in a config: `package.module:function` (answer validators, custom metrics).

Imported only when the config that names it is used, with an error that says what to fix when it cannot be.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from tunesmith.records import TunesmithError

HOOK_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check_hook_path(value: str) -> str:
    """For config validators: the string must look like package.module:function."""
    if not HOOK_PATH.fullmatch(value):
        raise ValueError(f"{value!r} must look like package.module:function")
    return value


def import_callable(dotted: str, what: str) -> Callable:
    """`package.module:function` named in a config → the function, or a clear error naming the setting (`what`)."""
    module_name, sep, attr = dotted.partition(":")
    if not sep or not module_name or not attr:
        raise TunesmithError(f"{what} {dotted!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TunesmithError(f"{what} {dotted!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise TunesmithError(f"{what} {dotted!r}: {module_name} has no function {attr!r}")
    return function
