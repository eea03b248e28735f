"""The Headwater process: the amqtt-based broker with Headwater's fixes, the plugin host, the CLI.

The config, the ACL decisions and the plugin interface it implements live in
:mod:`headwater.core`.
"""

from headwater.broker.app import Headwater, HeadwaterHost
from headwater.broker.durable import PublishGate

__all__ = ["Headwater", "HeadwaterHost", "PublishGate"]
