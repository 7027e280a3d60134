"""The config service: which supernodes exist and are healthy, and the cluster-wide settings.

Supernodes heartbeat to it; a host asks it for its supernodes and gets the healthy ones,
nearest first; supernodes and daemons poll it for settings (rate limits, policy URIs) and
apply them without a restart. DESIGN.md, "The live system".

Modules:
- ``addresses``: the one parser of ``HOST:PORT`` text (listen flags, supernode addresses).
- ``settings``: the known settings keys, their validation and normal forms (rates in bytes/s).
- ``nearest``: the nearest-first order of supernodes for a host (pure function).
- ``store``: the SQLite database (supernodes, settings and the settings version).
- ``server``: the aiohttp HTTP API under ``/v1`` and the process's life (signals, shutdown).
- ``client``: what supernodes and daemons call: one-shot requests and the heartbeat task.

Only ``client`` (and, for the command, ``server`` and ``store``) is meant to be imported by
other packages; the server is started with ``dfly config-service``.
"""
