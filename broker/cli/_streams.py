"""``headwater streams ls|describe|read|append|pause|resume``: the stream API from the shell.

Owns these subcommands, how their answers are shown (tables for people, JSON lines with
``--json``) and how client errors become exit statuses. ``read --follow`` runs the long poll in
a worker thread (:func:`_interruptible`) so that Ctrl-C never lands inside paho. Talks to
Headwater only through :class:`headwater.clients.streams.StreamClient`, imported when a command
runs so that ``headwater run`` does not load it.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

from headwater.broker.cli._client_options import add_client_options, seconds
from headwater.broker.cli._exits import (
    EXIT_FAILURE,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    fail,
)
from headwater.broker.cli._output import human_size, print_json, printable, table, timestamp
from headwater.clients.connection import InvalidURLError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from headwater.clients.streams import StreamClient
    from headwater.wire.streams import StorageInfo, StreamRecord

__all__ = ["add_streams_command"]

#: How long ``read --follow`` lets the connection close after Ctrl-C before exiting anyway.
_CLOSE_GRACE: Final = 5.0


def add_streams_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``headwater streams`` and its actions to the subcommands."""
    streams = commands.add_parser(
        "streams",
        help="list, read and append to durable streams",
        description="Talk to Headwater's stream API over MQTT (docs/stream-api.md).",
    )
    stream_actions = streams.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_stream_options(stream_actions.add_parser("ls", help="list streams"))
    describe = stream_actions.add_parser("describe", help="storage and export state of one stream")
    describe.add_argument("name", metavar="NAME")
    _add_stream_options(describe)
    read = stream_actions.add_parser("read", help="read records")
    read.add_argument("name", metavar="NAME")
    read.add_argument(
        "--from",
        dest="from_sequence",
        type=_sequence,
        metavar="SEQ",
        help="first sequence number (default: oldest)",
    )
    read.add_argument("--max", type=_positive_int, metavar="N", help="stop after N records")
    read.add_argument("--follow", action="store_true", help="keep waiting for new records (until Ctrl-C)")
    _add_stream_options(read)
    append = stream_actions.add_parser("append", help="append one record")
    append.add_argument("name", metavar="NAME")
    source = append.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--message", metavar="TEXT")
    source.add_argument("-f", "--file", metavar="FILE", help="the payload's bytes ('-': standard input)")
    append.add_argument("--topic", help="the record's topic (default: the API's request topic)")
    _add_stream_options(append)
    for action, what in (("pause", "pause an export (nothing is sent; persisted)"), ("resume", "resume it")):
        switch = stream_actions.add_parser(action, help=what)
        switch.add_argument("name", metavar="NAME")
        switch.add_argument("export", metavar="EXPORT", help="the export's id")
        _add_stream_options(switch)


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser, _cmd_streams)
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for each answer (default: 10)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number of at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"expected a sequence number (0 or more), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _stream_client(args: argparse.Namespace) -> StreamClient:
    from headwater.clients.streams import StreamClient  # noqa: PLC0415 - keeps `headwater run` light

    return StreamClient.connect(args.url, topic_prefix=args.topic_prefix, timeout=args.timeout)


def _cmd_streams(args: argparse.Namespace) -> int:
    """Run one ``headwater streams ACTION`` against the broker; errors become exit statuses."""
    from headwater.clients.streams import (  # noqa: PLC0415
        ForbiddenError,
        InvalidStreamRequestError,
        StreamClientError,
        StreamNotFoundError,
    )

    actions = {
        "ls": _streams_ls,
        "describe": _streams_describe,
        "read": _streams_read,
        "append": _streams_append,
        "pause": _streams_pause_or_resume,
        "resume": _streams_pause_or_resume,
    }
    payload = _append_payload(args) if args.action == "append" else b""
    try:
        with _stream_client(args) as client:
            return actions[args.action](client, args, payload)
    except InvalidURLError as exc:
        fail(f"--url: {exc}")
    except InvalidStreamRequestError as exc:
        fail(str(exc))
    except StreamNotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except ForbiddenError as exc:
        fail(str(exc), EXIT_FORBIDDEN)
    except StreamClientError as exc:
        fail(str(exc), EXIT_FAILURE)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _append_payload(args: argparse.Namespace) -> bytes:
    if args.message is not None:
        return str(args.message).encode()
    if args.file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        fail(f"{args.file}: {exc.strerror or exc}", EXIT_USAGE)


def _sequences(storage: StorageInfo) -> str:
    if storage.oldest_sequence is None or storage.newest_sequence is None:
        return "-"
    return f"{storage.oldest_sequence}..{storage.newest_sequence}"


def _streams_ls(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    descriptions = client.list()
    if args.json:
        for description in descriptions:
            print_json(description.to_json_dict())
        return EXIT_OK
    if not descriptions:
        print("no streams")
        return EXIT_OK
    rows = [
        (
            d.name,
            d.persistence,
            str(d.storage.record_count),
            human_size(d.storage.total_bytes),
            _sequences(d.storage),
            str(len(d.exports)),
        )
        for d in descriptions
    ]
    print("\n".join(table(("NAME", "PERSISTENCE", "RECORDS", "SIZE", "SEQUENCES", "EXPORTS"), rows)))
    return EXIT_OK


def _streams_describe(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    description = client.describe(args.name)
    if args.json:
        print_json(description.to_json_dict())
        return EXIT_OK
    storage = description.storage
    lines = [
        f"stream       {description.name}",
        f"persistence  {description.persistence}",
        f"state        {description.state}"
        + (f" ({description.last_error})" if description.last_error else ""),
        f"records      {storage.record_count} (sequences {_sequences(storage)})",
        f"size         {human_size(storage.total_bytes)} ({storage.total_bytes} bytes)",
        (
            f"dropped      {storage.dropped_oldest} oldest (full), {storage.rejected_new} new (full), "
            f"{storage.expired} expired (ttl)"
        ),
    ]
    if not description.exports:
        lines.append("exports      none")
    else:
        lines.append("exports")
        rows = [
            (
                export.id,
                export.type,
                str(export.priority),
                export.state,
                "-" if export.last_exported_sequence is None else str(export.last_exported_sequence),
                "-" if export.last_export_time is None else timestamp(export.last_export_time),
                str(export.exported_records),
                f"{export.lag_records} ({human_size(export.lag_bytes)})",
                str(export.dead_lettered),
                str(export.lost_records),
                export.last_error or "",
            )
            for export in description.exports
        ]
        header = (
            "ID",
            "TYPE",
            "PRIO",
            "STATE",
            "LAST SEQ",
            "LAST EXPORT",
            "EXPORTED",
            "LAG",
            "DEAD",
            "LOST",
            "LAST ERROR",
        )
        lines += [f"  {line}" for line in table(header, rows)]
    print("\n".join(lines))
    return EXIT_OK


def _streams_read(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    page = 1000 if args.max is None else min(args.max, 1000)
    records = client.iter_records(
        args.name, from_sequence=args.from_sequence, follow=args.follow, page_size=page
    )
    if args.follow:
        records = _interruptible(client, records)
    printer = _RecordPrinter(as_json=args.json)
    try:
        for record in records:
            printer.print(record)
            if args.max is not None and printer.printed >= args.max:
                break
    except KeyboardInterrupt:
        if not args.follow:
            raise
        # Ctrl-C is how --follow ends. Closing the connection must not keep the terminal: if
        # it has not finished within a few seconds, say so and exit anyway.
        _exit_after(_CLOSE_GRACE, "the connection did not close after Ctrl-C; exiting anyway")
    return EXIT_OK


def _exit_after(grace: float, message: str) -> None:
    """Exit the process (status 0) after ``grace`` seconds unless it has ended by then."""

    def expire() -> None:
        print(f"headwater: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_OK)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


class _RecordPrinter:
    """Prints records as ``streams read`` shows them (a header first in text mode)."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0

    def print(self, record: StreamRecord) -> None:
        if self.as_json:
            print_json(record.to_json_dict())
        else:
            if not self.printed:
                print("SEQ  TIME  TOPIC  PAYLOAD")
            line = f"{record.sequence}  {timestamp(record.timestamp_ms)}  {record.topic}  "
            print(line + printable(record.payload), flush=True)
        self.printed += 1


def _interruptible(client: StreamClient, records: Iterator[StreamRecord]) -> Iterator[StreamRecord]:
    """Iterate ``records`` in a worker thread, so that Ctrl-C only ever interrupts this thread.

    A KeyboardInterrupt raised in the middle of paho's ``publish`` (the main thread's long-poll
    requests) can leave paho's locks inconsistent and hang the exit; here the main thread only
    waits on a queue and prints. On Ctrl-C the client is closed, which ends the worker.
    """
    handoff: queue.Queue[StreamRecord | BaseException | None] = queue.Queue(maxsize=1000)

    def pump() -> None:
        try:
            for record in records:
                handoff.put(record)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            handoff.put(exc)
        else:
            handoff.put(None)

    worker = threading.Thread(target=pump, name="headwater-follow", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        client.close()
        worker.join(timeout=5)


def _streams_pause_or_resume(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    # Headwater answers an unknown export as an invalid request; for the exit status (not found)
    # and a useful message, look first.
    exports = [export.id for export in client.describe(args.name).exports]
    if args.export not in exports:
        listed = ", ".join(exports) or "none"
        fail(f"stream {args.name!r} has no export {args.export!r} (its exports: {listed})", EXIT_NOT_FOUND)
    if args.action == "pause":
        export = client.pause_export(args.name, args.export)
    else:
        export = client.resume_export(args.name, args.export)
    if args.json:
        print_json(export.to_json_dict())
    else:
        print(f"export {export.id} of stream {args.name}: {export.state}")
    return EXIT_OK


def _streams_append(client: StreamClient, args: argparse.Namespace, payload: bytes) -> int:
    sequence = client.append(args.name, payload, topic=args.topic)
    if args.json:
        print_json({"stream": args.name, "sequence": sequence})
    else:
        print(f"appended to {args.name} at sequence {sequence}")
    return EXIT_OK
