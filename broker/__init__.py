"""The Headwater process: config, the amqtt-based broker with Headwater's fixes, plugin host, CLI."""

from headwater.broker.app import Headwater, HeadwaterPlugin, PluginHost
from headwater.broker.config import ConfigError, HeadwaterConfig, load_config
from headwater.broker.durable import IncomingPublish, PublishGate, PublishInterceptor

__all__ = [
    "ConfigError",
    "Headwater",
    "HeadwaterConfig",
    "HeadwaterPlugin",
    "IncomingPublish",
    "PluginHost",
    "PublishGate",
    "PublishInterceptor",
    "load_config",
]
