"""The shared kernel below the broker and the plugins; it never imports either, nor amqtt.

- :mod:`~headwater.core.topics`: MQTT topic names, filters and matching;
- :mod:`~headwater.core.config`: the config schema and loader (``headwater.yaml``);
- :mod:`~headwater.core.access` and :mod:`~headwater.core.stream_rights`: the ACL decisions;
- :mod:`~headwater.core.publish`: incoming publishes, interceptors, the publish gate's interface;
- :mod:`~headwater.core.plugin_host`: what a plugin is and what the host offers it;
- :mod:`~headwater.core.streams`: the streams' errors and the interfaces their users call;
- :mod:`~headwater.core.store` (the one module that imports rocksdict) and its pure plans,
  :mod:`~headwater.core.retention`.

Wire shapes (what crosses MQTT to clients) live one layer down, in :mod:`headwater.wire`.
"""

__all__: list[str] = []
