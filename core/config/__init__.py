"""Headwater's configuration: the YAML schema as typed, frozen objects.

Owns: reading a YAML file (or the embedded default), validating every key once, and turning it
into the frozen dataclasses of :mod:`~headwater.core.config.schema`. It must never open sockets,
databases or files other than the config file itself (it only checks that the TLS files a
listener names exist).

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
:class:`ValueError` (they know no key path); the reader's converters turn that into a
``ConfigError``.

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

Modules, bottom up (each one's docstring says what it owns and must never do):

- ``errors``: :class:`ConfigError` and how a value is quoted in a message;
- ``units``: sizes, durations and bandwidths; ``schema``: the frozen dataclasses;
- ``reader``: the section reader (``_Section``) and the converters every section shares;
- ``broker``, ``aws``, ``streams``, ``deploy``: the validator of one section each;
- ``document``: :func:`parse_config`, the top-level keys, ``uploads`` and the checks across
  sections;
- ``loader``: the strict YAML loader, the embedded default and :func:`load_config`.

The public surface is ``__all__`` below: importers use ``headwater.core.config``, never a module
under it. A leading underscore marks a name private to this package; its modules import such
names from one another, nothing outside the package does.
"""

from __future__ import annotations

from headwater.core.config.document import parse_config
from headwater.core.config.errors import ConfigError
from headwater.core.config.loader import load_config
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
