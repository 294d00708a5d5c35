"""asyncproof: see and prove how a FastAPI service behaves under load.

The distribution's one import root. Its parts:

- :mod:`asyncproof.monitoring` — ``instrument(app)``: multi-worker Prometheus metrics and health
  (the base install);
- :mod:`asyncproof.app` — the reference app (the ``app`` extra);
- :mod:`asyncproof.loadtests` — Locust users, gates and ``asyncproof prove`` (the ``load`` extra).

Importing this package imports none of them.
"""
