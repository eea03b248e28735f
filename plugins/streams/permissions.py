"""Who may do what through the stream API: pure decisions over the broker's ACL.

Owns :class:`RequestPermissions`, the rules below, for one topic prefix. No I/O: it asks the
broker's :class:`~headwater.core.access.AccessPolicy` and publish gate, and
:class:`~headwater.core.stream_rights.StreamRights` for the stream rights.

Access control
--------------

The API never lets a user read data it could not read, send data where it could not, or destroy
data it does not administer. Per stream it checks three rights that the ACL entry lists under
``streams: {read, append, admin}`` as stream name patterns, or that are derived from topic rules
when the entry does not list them (:mod:`headwater.core.stream_rights` has the rules; without
an ACL everything is allowed):

* Every request needs the right to *publish* to its request topic (the broker checks that
  before the API sees the request). E.g. ``publish: ["headwater/streams/+/read"]``.
* ``read`` and ``describe`` of stream S need the ``read`` right on S (derived: the right to
  *subscribe* to ``<prefix>/streams/S/records`` for read, to ``<prefix>/streams/S/status`` for
  describe); ``_list`` shows only the streams the requester may describe.
* ``append`` to S needs the ``append`` right on S (derived: the right to publish the request),
  and, with an explicit ``topic``, the right to publish to that topic.
* ``create`` and ``update`` of S need the ``admin`` right on S, the right to subscribe to each
  of the stream's ``topics`` (a stream is a recording of those topics) and, when the config has
  ``exports``, the ``read`` right on S (an export sends the stream's records out).
* ``delete`` of S and ``export`` (pause/resume) of S's exports need the ``admin`` right on S.
* ``admin`` is never derived: only a pattern under ``streams.admin`` grants it.
* ``dead-letter`` (the upload plugin's stream of refused records, holding records of every
  stream) is granted only by a pattern that is exactly ``dead-letter``: not by ``*``, not by
  ``%u``, not by a derived right.
* ``reply_to`` must be a topic the requester may both *publish* to and *receive* (subscribe
  to), outside ``<prefix>/streams/``, not starting with ``$``: Headwater publishes there on the
  requester's behalf and must not become a way to inject messages into someone else's topic.
  A request whose ``reply_to`` fails this can't be answered: it is dropped, counted
  (:attr:`~headwater.plugins.streams.api.StreamsApiStatistics.unanswerable`) and logged.

The other refusals come back as ``forbidden`` errors naming the right or the topic. A request
without a usable ``reply_to`` (payload not a JSON object, ``reply_to`` missing or refused) is
unanswerable: it is not executed.

"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.core.access import AccessPolicy
from headwater.core.stream_rights import StreamAction, StreamRights
from headwater.core.topics import InvalidTopicError, validate_topic_name
from headwater.plugins.streams.requests import (
    AppendRequest,
    CreateRequest,
    DeleteRequest,
    DescribeRequest,
    ExportSwitchRequest,
    ListRequest,
    ReadRequest,
    Request,
    RequestError,
    UnanswerableRequestError,
    UpdateRequest,
)

if TYPE_CHECKING:
    from headwater.core.publish import PublishGateView

__all__ = ["RequestPermissions"]


class RequestPermissions:
    """The API's access rules (module docstring, *Access control*) for one topic prefix.

    ``access`` answers subscribe/receive and, through
    :class:`~headwater.core.stream_rights.StreamRights`, the stream rights; ``gate`` answers
    publish (the broker's own publish decision, which also refuses Headwater's reserved status
    topics).
    """

    def __init__(self, *, prefix: str, access: AccessPolicy, gate: PublishGateView) -> None:
        self._prefix = prefix
        self._access = access
        self._gate = gate
        self._rights = StreamRights(access, topic_prefix=prefix)

    def check_reply_to(self, username: str | None, reply_to: str) -> None:
        """Raise :class:`UnanswerableRequestError` unless the requester may be answered there."""
        try:
            validate_topic_name(reply_to)
        except InvalidTopicError as exc:
            msg = f"reply_to: {exc}"
            raise UnanswerableRequestError(msg) from exc
        if reply_to.startswith("$"):
            msg = f"reply_to: must not start with '$', got {reply_to!r}"
            raise UnanswerableRequestError(msg)
        if reply_to.startswith(f"{self._prefix}/streams/"):
            msg = f"reply_to: must not be under {self._prefix}/streams/, got {reply_to!r}"
            raise UnanswerableRequestError(msg)
        if not (self._gate.may_publish(username, reply_to) and self._access.may_receive(username, reply_to)):
            msg = f"reply_to: the requester may not both publish to and receive {reply_to!r}"
            raise UnanswerableRequestError(msg)

    def may_describe(self, username: str | None, stream: str) -> bool:
        """The ``read`` right on ``stream`` as describe (and ``_list``) use it."""
        return self._rights.may(username, "describe", stream)

    def may_read(self, username: str | None, stream: str) -> bool:
        """The ``read`` right on ``stream``."""
        return self._rights.may(username, "read", stream)

    def check(self, username: str | None, request: Request) -> None:
        """Raise :class:`RequestError` (``forbidden``) when ``username`` may not do ``request``."""
        who = "anonymous clients" if username is None else f"user {username!r}"
        for action, stream in _stream_actions(request):
            reason = self._rights.refusal(username, action, stream)
            if reason is not None:
                raise RequestError("forbidden", f"{who} {reason}")
        if (
            isinstance(request, AppendRequest)
            and request.topic is not None
            and not self._gate.may_publish(username, request.topic)
        ):
            raise RequestError("forbidden", f"{who} may not publish to {request.topic}")
        if isinstance(request, CreateRequest | UpdateRequest):
            for filter_ in request.config.topics:
                if not self._access.may_subscribe(username, filter_):
                    raise RequestError("forbidden", f"{who} may not subscribe to {filter_}")


def _stream_actions(request: Request) -> tuple[tuple[StreamAction, str], ...]:
    """The stream rights ``request`` needs, in the order they are checked."""
    actions: tuple[tuple[StreamAction, str], ...] = ()
    match request:
        case DescribeRequest():
            actions = (("describe", request.stream),)
        case ReadRequest():
            actions = (("read", request.stream),)
        case AppendRequest():
            actions = (("append", request.stream),)
        case CreateRequest() | UpdateRequest():
            name = request.config.name
            actions = (("admin", name),)
            # Exports send the stream's records out of the gateway (the stored ones too, from
            # `start: oldest`): only someone who may read them may set exports.
            if request.config.exports:
                actions = (*actions, ("read", name))
        case DeleteRequest() | ExportSwitchRequest():
            actions = (("admin", request.stream),)
        case ListRequest():
            pass  # each stream's describe right filters the list
    return actions
