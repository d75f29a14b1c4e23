"""The `tunelab` command: run the platform, its parts, and manage tokens (here); and
use it, as a person does (tunelab.commands: login, upload, apply, watch, chat)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tunelab.settings import SettingsError, load_settings


def _api(args: argparse.Namespace) -> None:
    import os
    import tempfile

    import uvicorn

    settings = load_settings()
    if settings.api_workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up every API process's counts, as under `tunelab up`.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tunelab-metrics-")
    uvicorn.run(
        "tunelab.functions.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        log_level="warning",
        lifespan="on",
        # Longer than clients keep idle connections (httpx: 5 s): a server that closes
        # first races the client's next request on that connection.
        timeout_keep_alive=75,
    )


def _worker(args: argparse.Namespace) -> None:
    from tunelab.workers.setup import run

    run(load_settings(), args.kind)


def _migrate(args: argparse.Namespace) -> None:
    from tunelab.db import Database

    Database(load_settings().effective_database_url).migrate()
    print("database is at the newest schema")


def _database() -> Any:
    from tunelab.db import Database

    db = Database(load_settings().effective_database_url)
    db.migrate()
    return db


def _token_create(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from tunelab.auth import TokenNameTaken, create_token

    expires = timedelta(days=args.expires_in_days) if args.expires_in_days else None
    try:
        token = create_token(
            _database(), args.workspace, name=args.name, role=args.role, expires_in=expires
        )
    except (TokenNameTaken, ValueError) as exc:
        sys.exit(f"tunelab: {exc}")
    print(token)


def _token_list(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from tunelab.auth import list_tokens
    from tunelab.db.tables import Workspace
    from tunelab.times import iso

    with _database().session() as session:
        workspace = session.scalar(select(Workspace).where(Workspace.name == args.workspace))
        if workspace is None:
            sys.exit(f"tunelab: no workspace {args.workspace!r}")
        print(f"{'NAME':<32} {'ROLE':<7} {'PREFIX':<11} {'EXPIRES':<21} REVOKED")
        for t in list_tokens(session, workspace.id):
            expires, revoked = iso(t.expires_at) or "-", iso(t.revoked_at) or "-"
            print(f"{t.name:<32} {t.role:<7} {t.prefix:<11} {expires:<21} {revoked}")


def _token_revoke(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from tunelab.auth import revoke_token
    from tunelab.db.tables import Workspace

    with _database().session() as session:
        workspace = session.scalar(select(Workspace).where(Workspace.name == args.workspace))
        token = revoke_token(session, workspace.id, args.name) if workspace else None
        if token is None:
            sys.exit(f"tunelab: no token {args.name!r} in workspace {args.workspace!r}")
    print(f"revoked {args.name}: refused everywhere within TUNELAB_TOKEN_CACHE_S seconds")


def _train_task(args: argparse.Namespace) -> None:
    from tunelab.workers.kube.pod import train_in_pod

    sys.exit(train_in_pod(load_settings(), args.task_id))


def _adapter_agent(args: argparse.Namespace) -> None:
    import os
    import threading

    from tunelab.context import open_context
    from tunelab.events.broker import build_broker
    from tunelab.workers.kube.agent import AdapterAgent, serve

    settings = load_settings()
    ctx = open_context(settings, build_broker(settings))
    agent = AdapterAgent(ctx, args.server_id, args.vllm_url)
    serve(agent, int(os.environ.get("TUNELAB_AGENT_PORT", settings.kube_agent_port)))
    agent.run(threading.Event())


def _fetch_model(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tunelab.serving.folders import model_folder
    from tunelab.store import open_store

    settings = load_settings()
    folder = model_folder(settings, open_store(settings), args.uri)
    target = Path(args.target)
    target.unlink(missing_ok=True)
    target.symlink_to(folder, target_is_directory=True)  # same volume in every container
    print(f"{args.uri} is at {target}")


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
    train = commands.add_parser(
        "train-task", help="train one scheduled task here (a Kubernetes Job's pod runs this)"
    )
    train.add_argument("task_id")
    train.set_defaults(run=_train_task)
    agent = commands.add_parser(
        "adapter-agent", help="keep a model-server pod's vLLM loaded with its services' adapters"
    )
    agent.add_argument("server_id")
    agent.add_argument("--vllm-url", default="http://127.0.0.1:8000")
    agent.set_defaults(run=_adapter_agent)
    fetch = commands.add_parser("fetch-model", help="fetch a model into a folder (a link)")
    fetch.add_argument("uri")
    fetch.add_argument("target")
    fetch.set_defaults(run=_fetch_model)
    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="print a new token for a workspace")
    create.add_argument("--workspace", required=True, help="workspace name (DNS-1123 label)")
    create.add_argument("--name", help="the token's name (default: from its prefix)")
    create.add_argument("--role", choices=["viewer", "member", "admin"], default="admin")
    create.add_argument("--expires-in-days", type=float, help="default: never")
    create.set_defaults(run=_token_create)
    listing = token_commands.add_parser("list", help="a workspace's tokens (no secrets)")
    listing.add_argument("--workspace", required=True)
    listing.set_defaults(run=_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token by its name")
    revoke.add_argument("--workspace", required=True)
    revoke.add_argument("name")
    revoke.set_defaults(run=_token_revoke)
    root.add_argument("--profile", default="default", help="the login profile to use")
    from tunelab import commands as people

    people.add(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        args.run(args)
    except SettingsError as exc:
        sys.exit(f"tunelab: {exc}")
    except ValueError as exc:
        sys.exit(f"tunelab: {exc}")


if __name__ == "__main__":
    main()
