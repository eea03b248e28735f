"""The AWS side of the scenario (docs/tutorial.md): create the export targets, check what arrived.

Reads a Headwater config (default: ``examples/scenario/headwater.yaml``) and works on the S3
buckets and Kinesis data streams its exports write to, with the config's ``aws.region`` and
endpoint (``aws.endpoint_url`` / ``aws.endpoints``; none = AWS itself). Credentials come from
boto3's default chain (``AWS_ACCESS_KEY_ID``..., ``~/.aws``), as for Headwater::

    python examples/scenario/aws.py create            # buckets and streams, 1 shard each
    python examples/scenario/aws.py wait aggregates   # until Headwater exported every record
    python examples/scenario/aws.py check --url mqtt://operator:PASSWORD@127.0.0.1:1883

``wait STREAM...`` asks Headwater (stream API) until every export of each stream has delivered
every stored record (its checkpoint is the newest sequence), so that what follows shows a settled
state instead of a moment of a moving one; exit 1 after ``--timeout`` seconds.

``check`` reads every exported stream through the stream API and compares it with what AWS
holds: each S3 object's JSON lines (by sequence and payload), each Kinesis record's data (by
payload). It prints one line per export and exits 1 when a stored record is missing in AWS.
Records sent twice (at least once delivery, after a crash) are counted, not an error. Firehose
and IoT Core exports are listed as not checked. ``check STREAM...`` checks only those streams;
``--wait SECONDS`` checks again every second until nothing is missing or the time is up.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from headwater.clients import StreamClient, StreamClientError
from headwater.clients.connection import InvalidURLError
from headwater.core.config import ConfigError, ExportConfig, HeadwaterConfig, load_config

DEFAULT_CONFIG = Path(__file__).resolve().with_name("headwater.yaml")
DEFAULT_URL = "mqtt://127.0.0.1:1883"


def say(line: str) -> None:
    """One line on stdout, flushed (the output is this script's interface)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def aws_client(config: HeadwaterConfig, service: str) -> Any:
    """A boto3 client for ``service`` with the config's region and endpoint."""
    endpoint = config.aws.endpoints.get(service) or config.aws.endpoint_url
    return boto3.client(service, region_name=config.aws.region, endpoint_url=endpoint)  # type: ignore[call-overload]


def exports_of(config: HeadwaterConfig) -> list[tuple[str, ExportConfig]]:
    """``(stream, export)`` for every export in the config."""
    return [(name, export) for name, stream in config.streams.items() for export in stream.exports]


# --- create -----------------------------------------------------------------------------------


def create_bucket(config: HeadwaterConfig, bucket: str) -> str:
    """Create ``bucket`` unless this account has it; say which."""
    s3 = aws_client(config, "s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"404", "NoSuchBucket", "NotFound"}:
            raise  # 403: the name belongs to another account (bucket names are global)
    else:
        return f"s3 bucket {bucket}: exists"
    options: dict[str, Any] = {}
    if config.aws.region != "us-east-1":  # us-east-1 refuses a location constraint
        options["CreateBucketConfiguration"] = {"LocationConstraint": config.aws.region}
    s3.create_bucket(Bucket=bucket, **options)
    return f"s3 bucket {bucket}: created"


def create_kinesis_stream(config: HeadwaterConfig, stream: str) -> str:
    """Create a one-shard Kinesis data stream unless it exists, wait until it is active; say which."""
    kinesis = aws_client(config, "kinesis")
    try:
        kinesis.create_stream(StreamName=stream, ShardCount=1)
        outcome = "created"
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        outcome = "exists"
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 2})
    return f"kinesis stream {stream}: {outcome}"


def create(config: HeadwaterConfig) -> int:
    """Create every bucket and Kinesis stream the exports write to (existing ones are kept)."""
    for _, export in exports_of(config):
        if export.type == "s3":
            say(create_bucket(config, str(export.options["bucket"])))
        elif export.type == "kinesis":
            say(create_kinesis_stream(config, str(export.options["stream_name"])))
        else:
            say(f"{export.type} export {export.id}: create its target yourself")
    return 0


# --- check ------------------------------------------------------------------------------------


def s3_lines(config: HeadwaterConfig, export: ExportConfig, stream: str) -> tuple[list[dict[str, Any]], int]:
    """Every JSON line of the export's objects, and how many objects there are."""
    s3 = aws_client(config, "s3")
    bucket = str(export.options["bucket"])
    template = str(export.options["key"])
    # Only the objects whose key can belong to this stream (the default key starts with its name).
    prefix = template.replace("{stream}", stream).split("{", 1)[0]
    lines: list[dict[str, Any]] = []
    objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            answer = s3.get_object(Bucket=bucket, Key=entry["Key"])
            body = answer["Body"].read()
            if answer.get("ContentEncoding") == "gzip" or entry["Key"].endswith(".gz"):
                body = gzip.decompress(body)
            lines += [json.loads(line) for line in body.splitlines() if line.strip()]
            objects += 1
    return lines, objects


def kinesis_payloads(config: HeadwaterConfig, export: ExportConfig) -> list[bytes]:
    """The data of every record in every shard of the export's Kinesis stream."""
    kinesis = aws_client(config, "kinesis")
    name = str(export.options["stream_name"])
    payloads: list[bytes] = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            payloads += [record["Data"] for record in answer["Records"]]
            if not answer["Records"] and answer.get("MillisBehindLatest", 0) == 0:
                break
            iterator = answer.get("NextShardIterator")
            time.sleep(0.2)  # Kinesis allows 5 GetRecords a second per shard
    return payloads


def payload_of(line: dict[str, Any]) -> object:
    """A ``streams read --json`` object's payload: text, or base64 for binary payloads."""
    return line.get("payload", line.get("payload_b64"))


def check_once(config: HeadwaterConfig, url: str, only: list[str]) -> tuple[int, list[str]]:
    """Compare the exported streams (``only`` these, if any) with AWS: (missing records, lines)."""
    missing_total = 0
    lines: list[str] = []
    exports = [(stream, export) for stream, export in exports_of(config) if not only or stream in only]
    with StreamClient.connect(url, topic_prefix=config.topic_prefix) as streams:
        stored = {name: list(streams.iter_records(name)) for name in {stream for stream, _ in exports}}
    for stream, export in exports:
        records = stored[stream]
        delivered: Counter[object]
        wanted: list[object]
        if export.type == "s3":
            objects_lines, objects = s3_lines(config, export, stream)
            delivered = Counter((line["sequence"], payload_of(line)) for line in objects_lines)
            wanted = [(record.sequence, payload_of(record.to_json_dict())) for record in records]
            where = f"s3://{export.options['bucket']} ({objects} objects)"
        elif export.type == "kinesis":
            delivered = Counter(kinesis_payloads(config, export))
            wanted = [record.payload for record in records]
            where = f"kinesis {export.options['stream_name']}"
        else:
            lines.append(f"{stream} -> {export.type} ({export.id}): not checked")
            continue
        missing = sum(1 for item in wanted if delivered[item] == 0)
        twice = sum(count - 1 for count in delivered.values() if count > 1)
        missing_total += missing
        lines.append(
            f"{stream} -> {where}: {len(wanted) - missing} of {len(wanted)} records, "
            f"{missing} missing, {twice} sent twice"
        )
    return missing_total, lines


def check(config: HeadwaterConfig, url: str, only: list[str], wait: float) -> int:
    """Check (again every second for up to ``wait`` seconds); 1 when a stored record is missing."""
    deadline = time.monotonic() + wait
    while True:
        missing, lines = check_once(config, url, only)
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    for line in lines:
        say(line)
    return 1 if missing else 0


def wait_exported(config: HeadwaterConfig, url: str, names: list[str], timeout: float) -> int:
    """Wait until every export of each stream in ``names`` has delivered every stored record."""
    deadline = time.monotonic() + timeout
    with StreamClient.connect(url, topic_prefix=config.topic_prefix) as streams:
        for name in names:
            while True:
                described = streams.describe(name)
                newest = described.storage.newest_sequence
                behind = [e for e in described.exports if e.last_exported_sequence != newest]
                if not behind:
                    shown = ", ".join(f"{e.id} at {e.last_exported_sequence}" for e in described.exports)
                    say(f"{name}: every record exported ({shown or 'no exports'})")
                    break
                if time.monotonic() >= deadline:
                    shown = ", ".join(f"{e.id} {e.state} at {e.last_exported_sequence}" for e in behind)
                    say(f"{name}: not exported after {timeout:g}s: {shown} (newest {newest})")
                    return 1
                time.sleep(0.5)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG, help="Headwater config (default: %(default)s)"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "create", parents=[common], help="create the buckets and Kinesis streams the exports write to"
    )
    checker = commands.add_parser("check", parents=[common], help="compare the exported streams with AWS")
    checker.add_argument("streams", nargs="*", metavar="STREAM", help="only these streams (default: all)")
    checker.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="check again until nothing is missing"
    )
    waiter = commands.add_parser(
        "wait", parents=[common], help="wait until Headwater exported every record of STREAM..."
    )
    waiter.add_argument("streams", nargs="+", metavar="STREAM")
    waiter.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="default: 120")
    for command in (checker, waiter):
        command.add_argument(
            "--url",
            default=os.environ.get("HEADWATER_URL", DEFAULT_URL),
            help="broker URL (default: $HEADWATER_URL, else %(default)s)",
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 2 for a bad config, an unreachable broker or an AWS error."""
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "create":
            return create(config)
        if args.command == "wait":
            return wait_exported(config, args.url, args.streams, args.timeout)
        return check(config, args.url, args.streams, args.wait)
    except (ConfigError, InvalidURLError, StreamClientError, BotoCoreError, ClientError, OSError) as exc:
        sys.stderr.write(f"aws.py: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
