"""The `tunelab` command: run the platform, its parts, and manage tokens."""

from __future__ import annotations

import argparse
import logging
import sys

from tunelab.settings import SettingsError, load_settings


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from tunelab.functions.app import create_app

    settings = load_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        lifespan="on",
    )


def _worker(args: argparse.Namespace) -> None:
    from tunelab.workers.setup import run

    run(load_settings(), args.kind)


def _migrate(args: argparse.Namespace) -> None:
    from tunelab.db import Database

    Database(load_settings().effective_database_url).migrate()
    print("database is at the newest schema")


def _token_create(args: argparse.Namespace) -> None:
    from tunelab.auth import create_token
    from tunelab.db import Database

    db = Database(load_settings().effective_database_url)
    db.migrate()
    print(create_token(db, args.workspace))


def _up(args: argparse.Namespace) -> None:
    from tunelab.launcher import up

    up(load_settings())


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tunelab", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "up", help="start Redis (if none is set), the API and both workers"
    ).set_defaults(run=_up)
    commands.add_parser("api", help="serve the HTTP API").set_defaults(run=_api)
    worker = commands.add_parser("worker", help="consume one worker kind's queue")
    worker.add_argument("kind", choices=["cpu", "gpu"])
    worker.set_defaults(run=_worker)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="print a new token for a workspace")
    create.add_argument("--workspace", required=True, help="workspace name (DNS-1123 label)")
    create.set_defaults(run=_token_create)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        args.run(args)
    except SettingsError as exc:
        sys.exit(f"tunelab: {exc}")
    except ValueError as exc:
        sys.exit(f"tunelab: {exc}")


if __name__ == "__main__":
    main()
