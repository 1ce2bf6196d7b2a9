"""The reference target: a local stand-in for MediaNest (routes, Socket.IO, metrics, latency, capacity limits,
faults) that every harness feature is tested against. Runs in its own process on asyncio; never imports locust
or gevent."""
