"""The reference app: every way of running slow work in FastAPI, instrumented with ``monitoring``.

Import ``asyncproof.app.main`` for :func:`~asyncproof.app.main.create_app`; this package itself stays
light, because the process pool's children import it too.
"""
