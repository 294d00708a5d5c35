"""Load tests, SLO gates and the ``asyncproof`` command line."""
