"""The Headwater process: the amqtt-based broker with Headwater's fixes, the plugin host, the CLI.

The config, the ACL decisions and the plugin interface it implements live in
:mod:`headwater.core`.

The names below are imported on first use: ``headwater passwd`` and the client commands import
:mod:`headwater.broker.cli`, hence this package, and must not pay for amqtt and RocksDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater.broker.app import Headwater, HeadwaterHost
    from headwater.broker.durable import PublishGate

__all__ = ["Headwater", "HeadwaterHost", "PublishGate"]

_MODULE_OF: dict[str, str] = {
    "Headwater": "headwater.broker.app",
    "HeadwaterHost": "headwater.broker.app",
    "PublishGate": "headwater.broker.durable",
}


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
