"""Which Headwater plugins a config enables.

The streams, upload and deploy plugins are enabled from the config: streams when ``streams`` is
non-empty, upload when any stream has an export, deploy when ``deploy.enabled``. Until a plugin's
issue lands, this module says so in the log instead of pretending it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater.broker.app import HeadwaterPlugin
    from headwater.broker.config import HeadwaterConfig

__all__ = ["builtin_plugins"]

logger = logging.getLogger(__name__)


def builtin_plugins(config: HeadwaterConfig) -> list[HeadwaterPlugin]:
    """The plugins ``config`` asks for, in start-up order (streams, upload, deploy)."""
    plugins: list[HeadwaterPlugin] = []
    if config.streams:
        logger.warning(
            "%d stream(s) configured (%s) but the streams plugin is not implemented yet: "
            "their messages are routed, not stored",
            len(config.streams),
            ", ".join(sorted(config.streams)),
        )
    if any(stream.exports for stream in config.streams.values()):
        logger.warning("exports configured but the upload plugin is not implemented yet: nothing is uploaded")
    if config.deploy.enabled:
        logger.warning("deploy is enabled but the deploy plugin is not implemented yet")
    return plugins
