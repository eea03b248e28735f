"""Stream API rights: who may read, append to and administer which stream.

Owns the decisions behind the stream API's ``forbidden`` errors that are about a *stream* (the
API itself, headwater.plugins.streams.api, adds the checks about *topics*: the request topic,
``reply_to``, an append's ``topic``, a stream's ``topics``). Pure and synchronous like
:class:`~headwater.core.access.AccessPolicy`, whose ACL entries it reads; it must never do
I/O, await or log.

Three rights per stream, listed per ACL entry as stream name patterns (``*`` any run of
characters, ``?`` one character, ``%u`` the username)::

    broker:
      acl:
        ops:
          streams: {read: ["*"], append: ["aggregates"], admin: ["aggregates", "tmp-*"]}

``read``
    describe and read the stream; ``_list`` shows only such streams.
``append``
    append records through the API.
``admin``
    create, update and delete the stream, pause and resume its exports.

Defaults, per right, for an entry that does not list it (the key absent or ``null``; ``[]``
grants nothing):

- ``read``: derived from the topic rules, as before stream rights existed: *read* needs the
  right to subscribe to ``<prefix>/streams/S/records``, *describe* (and ``_list``) the right to
  subscribe to ``<prefix>/streams/S/status``.
- ``append``: the right to publish to ``<prefix>/streams/S/append``, i.e. to send the request.
- ``admin``: none. Only a listed pattern grants it.

Without an ACL at all every right is granted; a user without an ACL entry has none.

A stream in :data:`~headwater.core.access.PROTECTED_STREAMS` (``dead-letter``, which holds
records of every stream) is granted only by a pattern that spells out its name: never by ``*``,
``?``, ``%u``, nor by a default derived from topic rules (``subscribe: ["#"]`` does not read it).

Every refusal comes with its reason (:meth:`StreamRights.refusal`), a phrase that follows
"user 'bob'" in the API's error message.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, TypeAlias

from headwater.core.access import PROTECTED_STREAMS, AccessPolicy, StreamRight

__all__ = ["StreamAction", "StreamRights", "StreamRightsStatistics"]

#: What a stream API request does to a stream; ``describe`` and ``read`` need the ``read`` right.
StreamAction: TypeAlias = Literal["describe", "read", "append", "admin"]

_RIGHT: dict[StreamAction, StreamRight] = {
    "describe": "read",
    "read": "read",
    "append": "append",
    "admin": "admin",
}
_VERB: dict[StreamAction, str] = {
    "describe": "describe",
    "read": "read",
    "append": "append to",
    "admin": "administer",
}
# The topic whose plain-MQTT right stands for the action when the entry lists no stream right.
_DERIVED_TOPIC: dict[StreamAction, tuple[Literal["publish", "subscribe"], str] | None] = {
    "describe": ("subscribe", "status"),
    "read": ("subscribe", "records"),
    "append": ("publish", "append"),
    "admin": None,
}


@dataclass(frozen=True, slots=True)
class StreamRightsStatistics:
    """Decision-cache counters."""

    cache_size: int
    cache_entries: int
    cache_hits: int
    cache_misses: int


class StreamRights:
    """Answers "may this user do this to that stream?" for one topic prefix.

    ``access`` holds the ACL (its entries' ``streams`` lists and topic rules). Decisions are
    cached in an LRU of ``cache_size`` entries (``0`` disables caching); a decision never
    depends on earlier ones.
    """

    __slots__ = ("_access", "_cache_size", "_prefix", "_refusal")

    def __init__(self, access: AccessPolicy, *, topic_prefix: str, cache_size: int = 4096) -> None:
        if cache_size < 0:
            msg = f"cache_size must be at least 0, not {cache_size}"
            raise ValueError(msg)
        self._access = access
        self._prefix = topic_prefix
        self._cache_size = cache_size
        self._refusal = functools.lru_cache(maxsize=cache_size)(self._decide)

    def may(self, username: str | None, action: StreamAction, stream: str) -> bool:
        """Tell whether ``username`` may do ``action`` to ``stream``."""
        return self._refusal(username, action, stream) is None

    def refusal(self, username: str | None, action: StreamAction, stream: str) -> str | None:
        """Why ``username`` may not do ``action`` to ``stream``, or ``None`` when it may.

        The reason reads after the user's name: ``"may not administer stream 'x' (...)"``.
        """
        return self._refusal(username, action, stream)

    def statistics(self) -> StreamRightsStatistics:
        """The decision cache's counters."""
        info = self._refusal.cache_info()
        return StreamRightsStatistics(
            cache_size=self._cache_size,
            cache_entries=info.currsize,
            cache_hits=info.hits,
            cache_misses=info.misses,
        )

    def _decide(self, username: str | None, action: StreamAction, stream: str) -> str | None:
        right = _RIGHT[action]
        granted = self._access.stream_grant(username, right, stream)
        if granted:
            return None
        if stream in PROTECTED_STREAMS:
            return (
                f"may not {_VERB[action]} stream {stream!r} (only {stream!r} itself in its "
                f"streams.{right} grants it, no wildcard)"
            )
        derived = _DERIVED_TOPIC[action]
        if granted is None and derived is not None:
            # The entry lists no such right: the topic rules decide, as before stream rights.
            kind, level = derived
            topic = f"{self._prefix}/streams/{stream}/{level}"
            allowed = (
                self._access.may_publish(username, topic)
                if kind == "publish"
                else self._access.may_subscribe(username, topic)
            )
            return None if allowed else f"may not {kind} to {topic}"
        return f"may not {_VERB[action]} stream {stream!r} (not in its streams.{right})"
