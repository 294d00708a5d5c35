"""The reference app: every way of running slow work in FastAPI, instrumented with ``monitoring``.

Import ``app.main`` for :func:`~app.main.create_app`; this package itself stays light, because the
process pool's children import it too.
"""
