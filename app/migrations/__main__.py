"""``python -m asyncproof.app.migrations``: bring the database of the settings (``ASYNCPROOF_*``) to
the newest schema, as a deployment step of its own; the servers then find it current.

With arguments, Alembic's command line for the app's migrations, on the same database and under the
same lock: ``revision --autogenerate --rev-id 0002 -m "..."`` writes the next revision from the
models, ``current``, ``history``, ``check``, ``downgrade -1``.
"""

from __future__ import annotations

import asyncio
import sys

from alembic.config import CommandLine
from sqlalchemy import Connection

from asyncproof.app import migrations
from asyncproof.app.data import make_engine
from asyncproof.app.settings import Settings


def alembic(argv: list[str], settings: Settings) -> None:
    cli = CommandLine(prog="python -m asyncproof.app.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")

    def run(connection: Connection) -> None:
        migrations._lock(connection)
        cfg = migrations.config()
        cfg.attributes["connection"] = connection
        cli.run_cmd(cfg, options)

    async def on_database() -> None:
        engine = make_engine(settings)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(on_database())


def main(argv: list[str]) -> int:
    settings = Settings()
    if argv:
        alembic(argv, settings)
        return 0
    try:
        migrated = migrations.upgrade_database(settings)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"database schema {migrated}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
