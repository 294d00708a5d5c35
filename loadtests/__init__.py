"""Load tests, SLO gates and ``asyncproof prove``."""
