"""Grafana dashboards as code (grafanalib): ``*.dashboard.py`` here, JSON in ``json/``."""
