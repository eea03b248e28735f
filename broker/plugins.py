"""Which Headwater plugins a config enables.

The streams plugin and its MQTT API always run, even with no stream in the config: streams can be
created at run time through the stream API, and run-time streams of an earlier run must be served
again. The API is listed right after the streams plugin, so that it stops taking requests before
the streams stop (the host stops plugins in reverse order). The upload plugin always runs (it
costs nothing without exports, and run-time streams may bring some); deploy runs when
``deploy.enabled``.

:func:`builtin_reserved_topics` gathers the topics every built-in plugin reserves (its status
topics), whether or not it runs: a client must not be able to forge a deploy status just
because deploy is disabled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from headwater.plugins.deploy.model import deploy_reserved_topics
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from headwater.plugins.upload.plugin import UploadPlugin

if TYPE_CHECKING:
    from headwater.core.config import HeadwaterConfig
    from headwater.core.plugin_host import HeadwaterPlugin

__all__ = ["builtin_plugins", "builtin_reserved_topics"]

logger = logging.getLogger(__name__)


def builtin_plugins(config: HeadwaterConfig) -> list[HeadwaterPlugin]:
    """The plugins ``config`` asks for, in start-up order (streams, upload, deploy)."""
    streams = StreamsPlugin()
    # The upload plugin always runs: run-time streams may bring exports. It starts after the
    # streams (whose storage it reads) and stops before them.
    plugins: list[HeadwaterPlugin] = [streams, StreamsApi(streams), UploadPlugin(streams)]
    if config.deploy.enabled:
        # Imported here: the docker SDK and boto3 load only when deploy is enabled.
        from headwater.plugins.deploy.plugin import DeployPlugin  # noqa: PLC0415

        plugins.append(DeployPlugin())
    return plugins


def builtin_reserved_topics(config: HeadwaterConfig) -> tuple[str, ...]:
    """The topic filters the built-in plugins reserve, running or not."""
    prefix = config.topic_prefix
    return (*deploy_reserved_topics(prefix), *StreamsPlugin.reserved_topics(prefix))
