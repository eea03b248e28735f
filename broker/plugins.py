"""Which Headwater plugins a config enables.

The streams plugin and its MQTT API always run, even with no stream in the config: streams can be
created at run time through the stream API, and run-time streams of an earlier run must be served
again. The API is listed right after the streams plugin, so that it stops taking requests before
the streams stop (the host stops plugins in reverse order). The upload plugin is enabled when any
stream has an export, deploy when ``deploy.enabled``. Until a plugin's issue lands, this module
says so in the log instead of pretending it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin

if TYPE_CHECKING:
    from headwater.broker.app import HeadwaterPlugin
    from headwater.broker.config import HeadwaterConfig

__all__ = ["builtin_plugins"]

logger = logging.getLogger(__name__)


def builtin_plugins(config: HeadwaterConfig) -> list[HeadwaterPlugin]:
    """The plugins ``config`` asks for, in start-up order (streams, upload, deploy)."""
    streams = StreamsPlugin()
    plugins: list[HeadwaterPlugin] = [streams, StreamsApi(streams)]
    if any(stream.exports for stream in config.streams.values()):
        logger.warning("exports configured but the upload plugin is not implemented yet: nothing is uploaded")
    if config.deploy.enabled:
        logger.warning("deploy is enabled but the deploy plugin is not implemented yet")
    return plugins
