"""The scenarios ``asyncproof prove`` runs; usable with plain ``locust`` too.

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 -u 10 -r 10 -t 30s \
        LivenessProbe ReadinessProbe SyncUser --gates gates.yaml --results-json results.json

Options of asyncproof's own (``--gates``, ``--probe-period``, ``--work-ms`` ...) are listed by
``locust -f loadtests/locustfile.py --help``.
"""

from asyncproof.loadtests import plugin  # noqa: F401  (registers the event listeners)
from asyncproof.loadtests.users import (  # noqa: F401  (Locust finds the user classes here)
    AsyncBlockingUser,
    AsyncUser,
    BackgroundTasksUser,
    DataUser,
    ExecutorUser,
    LivenessProbe,
    ProcessUser,
    QueueUser,
    ReadinessProbe,
    SyncUser,
)
