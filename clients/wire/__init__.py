"""The wire protocol shared by Headwater and its clients; stdlib only, no I/O.

- :mod:`~headwater.wire.streams`: the stream API's topics, envelope, records, descriptions;
- :mod:`~headwater.wire.deploy`: deploy topics, the deploy message, revisions, statuses.

Both sides encode and decode through these declarations; nothing here imports the hub, paho or
any third-party package (the ``headwater-client`` distribution ships this package).
"""

from headwater.wire._fields import WireFormatError

__all__ = ["WireFormatError"]
