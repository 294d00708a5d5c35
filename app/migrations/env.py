"""Alembic's environment script for the app's migrations.

It runs on the connection that :mod:`asyncproof.app.migrations` opened and locked, inside that
connection's transaction, which the caller commits.
"""

from alembic import context

from asyncproof.app.data import Base


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run the app's migrations through asyncproof.app.migrations "
            "(e.g. python -m asyncproof.app.migrations), which connects and takes the migration lock"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters a table by copying it: Alembic's batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic sets up its context before it runs this file; merely imported (as every module of the wheel
# is by the install test), the file does nothing.
if getattr(context, "config", None) is not None:
    run()
