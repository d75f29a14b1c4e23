"""The `tunelab` commands for people (on the SDK, tunelab.client): log in, upload,
apply a declaration, watch an experiment, chat and compare, list and download."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.commands import profiles

if TYPE_CHECKING:  # imported when a command runs: the server's commands never need it
    from tunelab.client import Client

Run = Callable[[argparse.Namespace, "Client"], int]


def _client(args: argparse.Namespace) -> Client:
    from tunelab.client import Client

    try:
        profile = profiles.load(args.profile)
    except LookupError as exc:
        sys.exit(f"tunelab: {exc}")
    return Client(profile.url, profile.token)


def _with_client(run: Run) -> Callable[[argparse.Namespace], None]:
    def command(args: argparse.Namespace) -> None:
        import httpx

        from tunelab.client import ApiError
        from tunelab.commands.show import errors

        with _client(args) as client:
            try:
                code = run(args, client)
            except ApiError as exc:
                errors.print(f"tunelab: {exc.message}", style="red", markup=False)
                for detail in exc.details[:10]:
                    errors.print(f"  {detail.get('field')}: {detail.get('message')}", markup=False)
                code = 1
            except httpx.TimeoutException:
                errors.print(
                    f"tunelab: {client.http.base_url} did not answer in time", markup=False
                )
                code = 1
            except httpx.TransportError as exc:
                errors.print(f"tunelab: cannot reach {client.http.base_url}: {exc}", markup=False)
                code = 1
        sys.exit(code)

    return command


def _login(args: argparse.Namespace) -> None:
    import httpx

    from tunelab.client import ApiError, Client

    token = args.token
    if token is None or token == "-":
        # Not on the command line, where `ps` and the shell's history would keep it.
        token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    profile = profiles.Profile(args.url.rstrip("/"), token.strip())
    with Client(profile.url, profile.token) as client:
        try:
            workspace = client.workspace()
        except ApiError as exc:
            sys.exit(f"tunelab: {profile.url} refused the token: {exc.message}")
        except httpx.TransportError as exc:
            sys.exit(f"tunelab: cannot reach {profile.url}: {exc}")
    path = profiles.save(args.profile, profile)
    who = f"workspace {workspace['name']}"
    print(f"logged in to {profile.url} as {who} (profile {args.profile} in {path})")


def _upload(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.datasets import upload_and_wait

    metadata: dict[str, Any] = {"language": args.language}
    ready = upload_and_wait(
        client,
        args.name,
        Path(args.file),
        Path(args.validate) if args.validate else None,
        Path(args.test) if args.test else None,
        metadata,
        wait=args.wait,
    )
    return 0 if ready else 1


def _listing(fetch: Callable[[Client], Any], columns: list[str]) -> Run:
    def run(args: argparse.Namespace, client: Client) -> int:
        from tunelab.commands.show import listing

        listing(fetch(client), columns, args.output)
        return 0

    return run


def _watch(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.watch import watch

    return watch(client, args.name)


def _cancel(args: argparse.Namespace, client: Client) -> int:
    print(f"experiment {args.name}: {client.experiments.cancel(args.name).status}")
    return 0


def _download(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.datasets import download

    return download(client, args.name, Path(args.folder))


def _apply(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.apply import apply

    return apply(client, Path(args.file))


def _chat(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.chat import repl

    return repl(client, args.service, args.max_tokens, args.temperature)


def _compare(args: argparse.Namespace, client: Client) -> int:
    from tunelab.commands.chat import compare

    return compare(client, args.services, args.message, args.max_tokens, args.output)


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table")


class _Commands:
    """A subcommands action whose every command also takes `--profile` after its name
    (`tunelab login --profile x ...`), as well as before it."""

    def __init__(self, commands: Any) -> None:
        self.commands = commands

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        parser = self.commands.add_parser(name, **kwargs)
        parser.add_argument(
            "--profile", default=argparse.SUPPRESS, help="the login profile (default: default)"
        )
        return parser


def _group(commands: Any, name: str, help: str) -> Any:
    group = commands.add_parser(name, help=help)
    return _Commands(group.add_subparsers(dest=f"{name}_command", required=True))


def add(commands: Any) -> None:
    """Add the people's commands to the `tunelab` parser's subcommands."""
    commands = _Commands(commands)
    login = commands.add_parser("login", help="store a platform's URL and token (0600)")
    login.add_argument("--url", required=True)
    login.add_argument("--token", help="the token; unset or -: asked for, or read from stdin")
    login.set_defaults(run=_login)

    datasets = _group(commands, "datasets", "upload and list datasets")
    upload = datasets.add_parser("upload", help="upload a dataset's files, with progress")
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    upload.add_argument("--validate", help="a file of validation rows")
    upload.add_argument("--test", help="a file of test rows")
    upload.add_argument("--language", choices=["en", "zh"], default="en")
    upload.add_argument("--wait", action="store_true", help="wait for the checks")
    upload.set_defaults(run=_with_client(_upload))
    columns = ["name", "status", "kind", "splits", "created_at"]
    _listed(datasets, lambda c: c.datasets.list(), columns)

    groups = _group(commands, "parameter-groups", "list parameter groups")
    columns = ["name", "finetune_type", "cluster", "namespace", "created_at"]
    _listed(groups, lambda c: c.parameter_groups.list(), columns)

    experiments = _group(commands, "experiments", "list, watch and cancel experiments")
    columns = ["name", "status", "evaluation", "best_task", "created_at"]
    _listed(experiments, lambda c: c.experiments.list(), columns)
    watch = experiments.add_parser(
        "watch", help="a live bar per task; the outcome is the exit code"
    )
    watch.add_argument("name")
    watch.set_defaults(run=_with_client(_watch))
    cancel = experiments.add_parser("cancel", help="cancel an experiment")
    cancel.add_argument("name")
    cancel.set_defaults(run=_with_client(_cancel))

    models = _group(commands, "models", "list and download models")
    columns = ["name", "kind", "status", "base_model", "score", "created_at"]
    _listed(models, lambda c: c.models.list(), columns)
    download = models.add_parser("download", help="a model's files into a folder")
    download.add_argument("name")
    download.add_argument("folder")
    download.set_defaults(run=_with_client(_download))

    services = _group(commands, "services", "list services")
    _listed(services, lambda c: c.services.list(), ["name", "model", "status", "created_at"])

    apply = commands.add_parser("apply", help="make a file's declared resources exist")
    apply.add_argument("-f", "--file", required=True)
    apply.set_defaults(run=_with_client(_apply))

    chat = commands.add_parser("chat", help="chat with a service (/system, /reset, /exit)")
    chat.add_argument("service")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.set_defaults(run=_with_client(_chat))
    compare = commands.add_parser("compare", help="up to three services' answers side by side")
    compare.add_argument("services", nargs="+")
    compare.add_argument("--message", "-m", help="one message (else each line typed)")
    compare.add_argument("--max-tokens", type=int, default=256)
    _output(compare)
    compare.set_defaults(run=_with_client(_compare))


def _listed(group: Any, fetch: Callable[[Client], Any], columns: list[str]) -> None:
    listed = group.add_parser("list", help="list them")
    _output(listed)
    listed.set_defaults(run=_with_client(_listing(fetch, columns)))
