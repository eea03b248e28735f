"""The upload plugin: one :class:`~headwater.plugins.upload.driver.ExportDriver` per export.

Owns the running exports of every stream — config-file streams and run-time ones — their tasks
(one named task per export, ``headwater-export <stream>/<id>``, started through the plugin host
and stopped by :meth:`UploadPlugin.stop`), the shared
:class:`~headwater.plugins.upload.scheduler.UploadScheduler`, and the dead-letter stream. It
attaches itself to the streams (:meth:`~headwater.core.streams.ExportableStreams.attach_exports`:
the streams plugin, handed over by the broker as that interface; this plugin never imports
it), which then shows
the exports in ``describe`` and on the status topics, and tells it when a stream is created,
updated or deleted at run time. It never calls boto3 (the sinks do) nor builds RocksDB keys.

Run-time changes: when a stream's exports change, the drivers of exports that were removed or
whose settings changed are stopped (a request in flight is cancelled: at least once, it will be
sent again); changed ones start again from their checkpoint; a removed export's checkpoint and
counters are deleted (so that ``drop_exported`` no longer waits for it).

The dead-letter stream
----------------------

Records AWS will never accept land in the stream :data:`DEAD_LETTER_STREAM` (``dead-letter``),
one record per refused record: its payload is a JSON object with ``stream``, ``export``,
``reason`` and the original record (``sequence``, ``timestamp``, ``topic``, ``qos``,
``client_id``, ``payload`` or ``payload_b64``); its topic and client id are the original ones.
If no stream of that name exists when the first such record comes, it is created at run time
(file, 64 MiB, ``overwrite_oldest``, no topics, no exports); define it in the config file to
choose other settings or to export it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from headwater.core.config import StreamConfig
from headwater.core.streams import InvalidStreamRequestError, StreamExistsError, StreamRejectedError
from headwater.plugins.upload.driver import ExportDriver, dead_letter_payload
from headwater.plugins.upload.scheduler import UploadScheduler
from headwater.plugins.upload.sink import AwsSession

if TYPE_CHECKING:
    from headwater.core.config import ExportConfig
    from headwater.core.plugin_host import PluginHost
    from headwater.core.streams import ExportableStreams
    from headwater.plugins.upload.sink import ExportSink
    from headwater.wire.streams import ExportInfo, StreamRecord

__all__ = ["DEAD_LETTER_STREAM", "SinkFactory", "UploadPlugin", "UploadStatistics"]

logger = logging.getLogger(__name__)

#: The stream that receives records AWS refused for good.
DEAD_LETTER_STREAM: Final = "dead-letter"
_DEAD_LETTER_CONFIG: Final = StreamConfig(
    name=DEAD_LETTER_STREAM, topics=(), persistence="file", max_size=64 * 1024 * 1024
)


class SinkFactory(Protocol):
    """Builds an export's sink (the real one is ``headwater.plugins.upload.factory.build_sink``)."""

    def __call__(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> ExportSink:
        """The sink for ``export`` of ``stream``."""
        ...


@dataclass(frozen=True, slots=True)
class UploadStatistics:
    """Counters of the upload plugin."""

    exports: int
    requests: int
    dead_lettered: int
    dead_letter_dropped: int


@dataclass(eq=False, slots=True)
class _Running:
    driver: ExportDriver
    task: asyncio.Task[None]


class UploadPlugin:
    """The upload plugin (a ``HeadwaterPlugin``); see the module docstring."""

    name = "upload"

    def __init__(self, streams: ExportableStreams, *, sink_factory: SinkFactory | None = None) -> None:
        self._streams = streams
        self._sink_factory = sink_factory
        self._host: PluginHost | None = None
        self._scheduler: UploadScheduler | None = None
        self._aws: AwsSession | None = None
        self._running: dict[tuple[str, str], _Running] = {}
        self._changes = asyncio.Lock()
        self._dead_lettered = 0
        self._dead_letter_dropped = 0
        self._stopped_requests = 0

    # --- lifecycle -------------------------------------------------------------------------

    def reserved_topics(self, prefix: str) -> tuple[str, ...]:  # noqa: ARG002 - the plugin interface
        """Dead letters go to a stream, not to a topic: the upload plugin reserves none."""
        return ()

    async def start(self, host: PluginHost) -> None:
        """Start a driver for every export of every served stream."""
        self._host = host
        config = host.config
        self._aws = AwsSession(
            region=config.aws.region,
            endpoint_url_default=config.aws.endpoint_url,
            endpoints=dict(config.aws.endpoints),
        )
        self._scheduler = UploadScheduler(config.uploads.max_bandwidth, aging=config.uploads.priority_aging)
        self._streams.attach_exports(self)
        for name in self._streams.names():
            self._sync(name)
        if self._running:
            limit = config.uploads.max_bandwidth
            logger.info(
                "uploading %d export(s)%s",
                len(self._running),
                f", shared bandwidth {limit:.0f} B/s" if limit else "",
            )

    async def stop(self) -> None:
        """Stop every driver (a request in flight is abandoned: it is sent again next time)."""
        self._streams.attach_exports(None)
        running = list(self._running.values())
        self._running.clear()
        await _cancel(running)
        self._stopped_requests += sum(entry.driver.requests for entry in running)
        if self._scheduler is not None:
            self._scheduler.close()

    # --- ExportObserver (called by the streams plugin) ----------------------------------------

    def export_infos(self, name: str) -> tuple[ExportInfo, ...]:
        """The exports of stream ``name``, in config order."""
        config = self._streams.stream_config(name)
        infos = []
        for export in config.exports:
            running = self._running.get((name, export.id))
            if running is not None:
                infos.append(running.driver.info())
        return tuple(infos)

    async def stream_changed(self, name: str) -> None:
        """Bring the drivers of ``name`` in line with its (new) exports; none if it was deleted."""
        async with self._changes:
            stale = [
                (key, entry)
                for key, entry in self._running.items()
                if key[0] == name and not self._still_wanted(name, entry.driver.export)
            ]
            for key, _ in stale:
                del self._running[key]
            await _cancel([entry for _, entry in stale])
            wanted = self._wanted_ids(name)
            for (_, export_id), entry in stale:
                self._stopped_requests += entry.driver.requests
                if export_id not in wanted and name in self._streams.names():
                    self._streams.forget_export(name, export_id)
            if name in self._streams.names():
                self._sync(name)

    def set_export_enabled(self, name: str, export_id: str, *, enabled: bool) -> ExportInfo:
        """Pause or resume export ``export_id`` of ``name``."""
        running = self._running.get((name, export_id))
        if running is None:
            exports = ", ".join(export.id for export in self._streams.stream_config(name).exports) or "none"
            msg = f"stream {name!r} has no export {export_id!r} (its exports: {exports})"
            raise InvalidStreamRequestError(msg)
        running.driver.set_enabled(enabled)
        return running.driver.info()

    # --- DeadLetters (called by the drivers) ----------------------------------------------------

    async def put(self, stream: str, export_id: str, record: StreamRecord, reason: str) -> bool:
        """Append ``record`` with ``reason`` to the dead-letter stream; False if it refused it."""
        if DEAD_LETTER_STREAM not in self._streams.names():
            try:
                await self._streams.create(_DEAD_LETTER_CONFIG)
                logger.info("created stream %s for records AWS refuses for good", DEAD_LETTER_STREAM)
            except StreamExistsError:
                pass  # another driver created it meanwhile
        try:
            await self._streams.append(
                DEAD_LETTER_STREAM,
                dead_letter_payload(stream, export_id, record, reason),
                topic=record.topic,
                client_id=record.client_id,
            )
        except StreamRejectedError as exc:
            self._dead_letter_dropped += 1
            logger.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                "record %d of stream %s (export %s) is lost: AWS refuses it (%s) and the dead-letter "
                "stream refused it too (%s)",
                record.sequence,
                stream,
                export_id,
                reason,
                exc,
            )
            return False
        self._dead_lettered += 1
        return True

    def statistics(self) -> UploadStatistics:
        """A snapshot of the counters."""
        return UploadStatistics(
            exports=len(self._running),
            requests=self._stopped_requests + sum(entry.driver.requests for entry in self._running.values()),
            dead_lettered=self._dead_lettered,
            dead_letter_dropped=self._dead_letter_dropped,
        )

    def driver(self, stream: str, export_id: str) -> ExportDriver:
        """The running driver of an export (for tests and diagnostics)."""
        return self._running[(stream, export_id)].driver

    # --- helpers -------------------------------------------------------------------------------

    def _wanted_ids(self, name: str) -> set[str]:
        if name not in self._streams.names():
            return set()
        return {export.id for export in self._streams.stream_config(name).exports}

    def _still_wanted(self, name: str, export: ExportConfig) -> bool:
        if name not in self._streams.names():
            return False
        return export in self._streams.stream_config(name).exports

    def _sync(self, name: str) -> None:
        """Start drivers for the exports of ``name`` that have none."""
        host, scheduler, aws = self._host, self._scheduler, self._aws
        if host is None or scheduler is None or aws is None:
            msg = "the upload plugin is not started"
            raise RuntimeError(msg)
        for export in self._streams.stream_config(name).exports:
            if (name, export.id) in self._running:
                continue
            sink = self._build_sink(export, stream=name, aws=aws)
            driver = ExportDriver(
                stream=name,
                export=export,
                sink=sink,
                streams=self._streams,
                scheduler=scheduler,
                dead_letters=self,
                max_backoff=host.config.uploads.max_backoff,
            )
            task = host.spawn(driver.run(), name=f"headwater-export {name}/{export.id}")
            self._running[(name, export.id)] = _Running(driver, task)

    def _build_sink(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> ExportSink:
        if self._sink_factory is not None:
            return self._sink_factory(export, stream=stream, aws=aws)
        # boto3 is imported only when an export exists: `headwater run` without exports stays light.
        from headwater.plugins.upload.factory import build_sink  # noqa: PLC0415

        return build_sink(export, stream=stream, aws=aws)


async def _cancel(running: list[_Running]) -> None:
    for entry in running:
        entry.task.cancel()
    await asyncio.gather(*(entry.task for entry in running), return_exceptions=True)
