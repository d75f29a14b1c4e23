"""The Starlette app: every HTTP trigger, wired to its clients in one lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dramatiq import Broker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tunelab.audit import AuditTrail
from tunelab.auth import TokenCache
from tunelab.context import open_context
from tunelab.db import Database
from tunelab.errors import MethodNotAllowed, NotFound, TunelabError
from tunelab.events.broker import build_broker
from tunelab.functions import (
    audit,
    batches,
    chat,
    dataset_rows,
    datasets,
    events_api,
    experiments,
    fine_tuning,
    health,
    openai_files,
    openapi,
    options,
    parameter_groups,
    pings,
    repository,
    services,
    stored_chats,
    tasks,
    tokens,
    triggers,
    usage,
    webhooks,
    workspace,
)
from tunelab.functions.boundary import BodyLimit
from tunelab.functions.console import ROUTES as CONSOLE_ROUTES
from tunelab.functions.idempotency import Idempotency
from tunelab.functions.middleware import BearerAuth, RequestMetrics
from tunelab.functions.responses import error_response
from tunelab.serving.gateway import Gateway
from tunelab.serving.routes import ChangeListener, RouteTable
from tunelab.serving.stored_chats import ChatArchive
from tunelab.serving.usage import Flusher, UsageMeter
from tunelab.settings import Settings, get_settings
from tunelab.store import ObjectStore

log = logging.getLogger("tunelab.api")

API = "/api/v1"

ROUTES = [
    Route("/healthz", health.healthz),
    Route("/readyz", health.readyz),
    Route("/metrics", health.metrics),
    Route("/openapi.json", openapi.openapi_json),
    Route(f"{API}/workspace", workspace.whoami, methods=["GET"]),
    Route(f"{API}/clusters", options.list_clusters, methods=["GET"]),
    Route(f"{API}/dataset-options", options.dataset_options, methods=["GET"]),
    Route(f"{API}/datasets", datasets.create_dataset, methods=["POST"]),
    Route(f"{API}/datasets", datasets.list_datasets, methods=["GET"]),
    Route(f"{API}/datasets/{{name}}", datasets.get_dataset, methods=["GET"]),
    Route(f"{API}/datasets/{{name}}", datasets.delete_dataset, methods=["DELETE"]),
    Route(f"{API}/datasets/uploads", datasets.create_upload, methods=["POST"]),
    Route(f"{API}/datasets/{{name}}/preview", dataset_rows.preview_dataset, methods=["GET"]),
    Route(f"{API}/datasets/{{name}}/export", dataset_rows.export_dataset, methods=["GET"]),
    Route(f"{API}/parameter-groups", parameter_groups.create_group, methods=["POST"]),
    Route(f"{API}/parameter-groups", parameter_groups.list_groups, methods=["GET"]),
    Route(f"{API}/parameter-groups/{{name}}", parameter_groups.get_group, methods=["GET"]),
    Route(f"{API}/parameter-groups/{{name}}", parameter_groups.delete_group, methods=["DELETE"]),
    Route(f"{API}/parameter-presets", parameter_groups.list_presets, methods=["GET"]),
    Route(f"{API}/experiments", experiments.create_experiment, methods=["POST"]),
    Route(f"{API}/experiments", experiments.list_experiments, methods=["GET"]),
    Route(f"{API}/experiments/{{name}}", experiments.get_experiment, methods=["GET"]),
    Route(f"{API}/experiments/{{name}}/cancel", experiments.cancel_experiment, methods=["POST"]),
    Route(
        f"{API}/experiments/{{name}}/tasks/{{task}}/metrics",
        tasks.task_metrics,
        methods=["GET"],
    ),
    Route(f"{API}/experiments/{{name}}/tasks/{{task}}/logs", tasks.task_logs),
    Route(f"{API}/evaluations", options.list_evaluations, methods=["GET"]),
    Route(f"{API}/models", repository.list_models, methods=["GET"]),
    Route(f"{API}/models", repository.register_model, methods=["POST"]),
    Route(f"{API}/models/{{name}}", repository.get_model, methods=["GET"]),
    Route(f"{API}/models/{{name}}/files", repository.model_files, methods=["GET"]),
    Route(f"{API}/models/{{name}}/download", repository.download_model, methods=["GET"]),
    Route(f"{API}/models/{{name}}/merge", repository.merge_model, methods=["POST"]),
    Route(f"{API}/models/{{name}}", repository.delete_model, methods=["DELETE"]),
    Route(f"{API}/services", services.create_service, methods=["POST"]),
    Route(f"{API}/services", services.list_services, methods=["GET"]),
    Route(f"{API}/services/{{name}}", services.get_service, methods=["GET"]),
    Route(f"{API}/services/{{name}}", services.delete_service, methods=["DELETE"]),
    Route(f"{API}/chat/compare", chat.compare, methods=["POST"]),
    Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
    Route(f"{API}/chat/feedback", stored_chats.chat_feedback, methods=["POST"]),
    Route("/v1/chat/completions", stored_chats.list_chats, methods=["GET"]),
    Route("/v1/chat/completions/{id}", stored_chats.get_chat, methods=["GET"]),
    Route("/v1/chat/completions/{id}", stored_chats.update_chat, methods=["POST"]),
    Route("/v1/chat/completions/{id}", stored_chats.delete_chat, methods=["DELETE"]),
    Route("/v1/chat/completions/{id}/messages", stored_chats.chat_messages, methods=["GET"]),
    Route("/v1/models", chat.list_openai_models, methods=["GET"]),
    Route("/v1/files", openai_files.create_file, methods=["POST"]),
    Route("/v1/files", openai_files.list_files, methods=["GET"]),
    Route("/v1/files/{id}", openai_files.get_file, methods=["GET"]),
    Route("/v1/files/{id}", openai_files.delete_file, methods=["DELETE"]),
    Route("/v1/files/{id}/content", openai_files.file_content, methods=["GET"]),
    Route("/v1/fine_tuning/jobs", fine_tuning.create_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs", fine_tuning.list_jobs, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{id}", fine_tuning.get_job, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{id}/cancel", fine_tuning.cancel_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs/{id}/events", fine_tuning.list_events, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{id}/checkpoints", fine_tuning.list_checkpoints, methods=["GET"]),
    Route(f"{API}/usage", usage.get_usage, methods=["GET"]),
    Route(f"{API}/tokens", tokens.get_tokens, methods=["GET"]),
    Route(f"{API}/tokens", tokens.post_token, methods=["POST"]),
    Route(f"{API}/tokens/{{name}}", tokens.delete_token, methods=["DELETE"]),
    Route(f"{API}/audit", audit.list_audit, methods=["GET"]),
    Route(f"{API}/batches", batches.create_batch, methods=["POST"]),
    Route(f"{API}/batches", batches.list_batches, methods=["GET"]),
    Route(f"{API}/batches/{{id}}", batches.get_batch, methods=["GET"]),
    Route(f"{API}/batches/{{id}}/{{file}}", batches.batch_file, methods=["GET"]),
    Route("/triggers/s3", triggers.s3_trigger, methods=["POST"]),
    Route(f"{API}/events", events_api.list_events, methods=["GET"]),
    Route(f"{API}/events/stream", events_api.stream_events, methods=["GET"]),
    Route(f"{API}/webhooks", webhooks.create_webhook, methods=["POST"]),
    Route(f"{API}/webhooks", webhooks.list_webhooks, methods=["GET"]),
    Route(f"{API}/webhooks/{{name}}", webhooks.get_webhook, methods=["GET"]),
    Route(f"{API}/webhooks/{{name}}", webhooks.delete_webhook, methods=["DELETE"]),
    Route(f"{API}/webhooks/{{name}}/deliveries", webhooks.list_deliveries, methods=["GET"]),
    Route(f"{API}/system/ping", pings.ping, methods=["POST"]),
    Route(f"{API}/dead-letters", pings.list_dead_letters, methods=["GET"]),
    *CONSOLE_ROUTES,
]


async def tunelab_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TunelabError)
    return error_response(request.url.path, exc)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error: TunelabError
    if exc.status_code == 404:
        error = NotFound(f"No route {request.method} {request.url.path}; see API.md.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.url.path} does not accept {request.method}.")
    else:
        error = TunelabError(str(exc.detail))
        error.status, error.code = exc.status_code, "http_error"
    return error_response(request.url.path, error, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = TunelabError("The server failed; the error is in its log.")
    return error_response(request.url.path, error)


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    store: ObjectStore | None = None,
    broker: Broker | None = None,
) -> Starlette:
    """Build the app; clients not passed in are made from settings at start-up."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conf = settings or get_settings()
        app.state.settings = conf
        # What the lifecycle functions take, as the workers' actors give it to them.
        ctx = open_context(conf, broker or build_broker(conf), db=db, store=store)
        app.state.context = ctx
        app.state.db, app.state.store, app.state.bus = ctx.db, ctx.store, ctx.bus
        app.state.broker = ctx.bus.broker
        ctx.db.migrate()
        repository.ensure_builtin_models(ctx.db)
        app.state.queue_metrics = health.queue_registry(
            app.state.broker.client, [conf.cpu_queue, conf.gpu_queue, conf.train_queue]
        )
        app.state.tokens = TokenCache(app.state.db, conf.token_cache_s)
        # The data plane: chats go from here straight to the model servers.
        routes = RouteTable(app.state.db)
        listener = ChangeListener(app.state.bus.redis, routes)
        app.state.archive = ChatArchive(conf.chat_retention_days)
        app.state.audit = AuditTrail()
        meter = UsageMeter()
        flusher = Flusher(
            [
                lambda: meter.flush(app.state.db),
                lambda: app.state.archive.flush(app.state.db),
                lambda: app.state.audit.flush(app.state.db),
            ],
            conf.traffic_flush_s,
        )
        app.state.gateway = Gateway(conf, app.state.store, routes, meter)
        listener.start()
        flusher.start()
        yield
        await app.state.gateway.aclose()
        listener.stop()
        flusher.stop()  # the last counts and stored chats are written
        if db is None:
            app.state.db.dispose()

    return Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(RequestMetrics),
            Middleware(BodyLimit),
            Middleware(BearerAuth),
            Middleware(audit.Audit),
            Middleware(Idempotency),
        ],
        exception_handlers={
            TunelabError: tunelab_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
