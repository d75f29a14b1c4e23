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


def _train_task(args: argparse.Namespace) -> None:
    from tunelab.workers.gpu.pod import train_in_pod

    sys.exit(train_in_pod(load_settings(), args.task_id))


def _adapter_agent(args: argparse.Namespace) -> None:
    import os
    import threading

    from tunelab.events.broker import build_broker
    from tunelab.workers.kube.agent import AdapterAgent, serve
    from tunelab.workers.setup import install_broker, make_context

    settings = load_settings()
    ctx = make_context(settings, install_broker(build_broker(settings)))
    agent = AdapterAgent(ctx, args.server_id, args.vllm_url)
    serve(agent, int(os.environ.get("TUNELAB_AGENT_PORT", settings.kube_agent_port)))
    agent.run(threading.Event())


def _fetch_model(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tunelab.store import open_store
    from tunelab.workers.gpu.serving.models import model_folder

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
