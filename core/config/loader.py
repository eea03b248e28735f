"""Reading the config file (or the embedded default) as YAML 1.2 and handing it to the validator.

Owns: the strict YAML loader (only ``true``/``false`` are booleans, integers are decimal,
duplicate keys are refused), the one-line wording of YAML errors, where the embedded default is
found (in a regular and in an editable install) and :func:`load_config`. The config file is the
only file it reads. It must never check a key: the loaded document goes whole to
:func:`~headwater.core.config.document.parse_config`.
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
from headwater.core.config.schema import HeadwaterConfig


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
