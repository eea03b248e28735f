"""Headwater's configuration: the YAML schema as typed, frozen objects.

Owns: reading a YAML file (or the embedded default), validating every key once, and turning it
into the frozen dataclasses below. It must never open sockets, databases or files other than the
config file itself (it only checks that the TLS files a listener names exist).

Why frozen dataclasses and a hand-written validator rather than pydantic: the schema is small,
we want exactly one error line of the form ``key.path: reason`` (pydantic's multi-line reports
would have to be reformatted anyway), and it keeps a heavy dependency out of a gateway image.

Error contract: every problem raises :class:`ConfigError` whose ``str()`` is one line naming the
dotted key path and the reason, e.g. ``streams.telemetry.max_size: must be at least 1KiB``.
List items are named by index (``streams.telemetry.exports[0].priority``). Problems with the
file as a whole (unreadable, not YAML, empty, not a mapping) have an empty ``path`` and a reason
that starts with the file name.

Exceptions::

    ValueError
     └── ConfigError            a config problem: ``key.path: reason`` on one line

:func:`parse_size`, :func:`parse_duration` and :func:`parse_bandwidth` raise plain
:class:`ValueError` (they know no key path); the validator turns that into a ``ConfigError``.

Reading rules, in one place:

- Scalars follow YAML 1.2, not PyYAML's YAML 1.1 default: only ``true``/``false`` are booleans
  (``yes``, ``no``, ``on``, ``off`` stay strings and are refused where a boolean is expected),
  and ``1:30`` or ``0755`` are strings, never base-60 or octal numbers. A key written twice in
  one mapping is refused.
- ``null`` is accepted exactly where the default is ``null`` (``ttl``, ``password_file``,
  ``max_bandwidth``...). A whole section or list written as ``null`` (``exports:`` with nothing
  under it) means "the default".
- Relative paths (``data_dir``, ``password_file``, TLS files) are resolved against the current
  working directory of the process, *not* the directory of the config file, and stored absolute.
- Sizes, durations and bandwidths are parsed by :func:`parse_size`, :func:`parse_duration` and
  :func:`parse_bandwidth` and stored as bytes, seconds and bytes per second.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Hashable
from importlib import resources
from pathlib import Path
from typing import Final

import yaml
from yaml.constructor import ConstructorError

from headwater.core.config.document import parse_config
from headwater.core.config.errors import ConfigError
from headwater.core.config.schema import (
    AwsConfig,
    BrokerLimits,
    BrokerSettings,
    DeployConfig,
    DeployPolicy,
    ExportConfig,
    HeadwaterConfig,
    ListenerConfig,
    RegistryCredential,
    StreamConfig,
    TLSConfig,
    TopicACL,
    UploadsConfig,
)
from headwater.core.config.streams import parse_stream_config
from headwater.core.config.units import format_size, parse_bandwidth, parse_duration, parse_size

__all__ = [
    "AwsConfig",
    "BrokerLimits",
    "BrokerSettings",
    "ConfigError",
    "DeployConfig",
    "DeployPolicy",
    "ExportConfig",
    "HeadwaterConfig",
    "ListenerConfig",
    "RegistryCredential",
    "StreamConfig",
    "TLSConfig",
    "TopicACL",
    "UploadsConfig",
    "format_size",
    "load_config",
    "parse_bandwidth",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_stream_config",
]


# --------------------------------------------------------------------------------------------
# YAML 1.2-style loading
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and integers, refusing duplicate keys."""

    def construct_mapping(
        self,
        node: yaml.MappingNode,
        deep: bool = False,  # noqa: FBT001, FBT002 -- PyYAML's signature, called positionally
    ) -> dict[Hashable, object]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            # Merge keys ("<<") may legitimately be overridden; only literal duplicates count.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx) for tag, rx in resolvers if tag not in {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# Decimal only: PyYAML would read 0755 as octal and 1:30 as 90.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)


def _yaml_error_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return " ".join(f"invalid YAML{where}: {problem}".split())
    return " ".join(f"invalid YAML: {exc}".split())


_EMBEDDED_SOURCE: Final = "<embedded default>"
_EMBEDDED_NAME: Final = "headwater.yaml"


def _read_embedded_default() -> str:
    """The text of ``headwater.defaults/headwater.yaml``, in a regular or an editable install.

    ``headwater.defaults`` is a data-only namespace package. In an editable install
    (``pip install -e .``) its ``__path__`` holds the real folder *and* setuptools' path-hook
    placeholder, and ``resources.files()`` then builds a ``MultiplexedPath``, which refuses any
    entry that is not a folder. So the file is looked up in each real folder of the path first;
    ``resources`` remains the way for installs whose path has no folder (a zip).
    """
    package = importlib.import_module("headwater.defaults")
    for folder in getattr(package, "__path__", ()):
        candidate = Path(folder) / _EMBEDDED_NAME
        if candidate.is_file():
            return candidate.read_text("utf-8")
    return resources.files(package).joinpath(_EMBEDDED_NAME).read_text("utf-8")


def load_config(path: Path | None) -> HeadwaterConfig:
    """Read and validate a config file; ``None`` reads the embedded default.

    The embedded default is ``headwater.yaml`` in the package ``headwater.defaults`` (the
    repository's ``config/`` folder). Relative paths inside the config are resolved against the
    current working directory, not against the file's directory. Raises :class:`ConfigError`.
    """
    if path is None:
        source = _EMBEDDED_SOURCE
        try:
            text = _read_embedded_default()
        except (OSError, ModuleNotFoundError) as exc:
            raise ConfigError("", f"{source}: cannot read headwater.defaults/headwater.yaml: {exc}") from exc
    else:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{source}: cannot read config file: not UTF-8 text") from exc
        except OSError as exc:
            raise ConfigError("", f"{source}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        data: object = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: {_yaml_error_reason(exc)}") from exc
    return parse_config(data, source=source)
