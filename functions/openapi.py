"""The OpenAPI description of the HTTP API (`GET /openapi.json`), made from the same
pydantic models the functions parse bodies with, so it cannot drift from what is
accepted; a test keeps its operations in step with the app's routes, and the fuzz test
(schemathesis) checks every answer against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.api_requests import CompareRequest, Feedback, GroupRequest, TokenRequest
from tunelab.dataset_requests import RemoteDataset, UploadRequest
from tunelab.experiment_rules import ExperimentRequest
from tunelab.fine_tuning import JobRequest
from tunelab.functions.pings import PingRequest
from tunelab.functions.repository import MergeRequest, RegisterRequest
from tunelab.functions.stored_chats import MetadataUpdate
from tunelab.functions.webhooks import WebhookSpec
from tunelab.serving.openai import ChatRequest
from tunelab.serving_rules import DeployRequest

API = "/api/v1"
NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string", "maxLength": 1200},
                "details": {"type": "array", "items": {"type": "object"}, "maxItems": 100},
            },
        }
    },
}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "maxLength": 1200},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
OBJECT: dict[str, Any] = {"type": "object"}
LISTING = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}}
OPENAI_LIST = {"type": "object", "required": ["object", "data"]}


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    ok: int = 200
    answer: dict[str, Any] = field(default_factory=lambda: OBJECT)
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    forms: tuple[str, ...] = ()
    """Other request media types the operation takes (documented, not generated)."""
    raw: str | None = None
    """A media type the answer has instead of JSON (a file)."""


def _q(name: str, kind: str = "string", **schema: Any) -> tuple[str, dict[str, Any]]:
    return name, {"type": kind, **schema}


LIMIT = _q("limit", "integer", minimum=1, maximum=1000)
OPENAI_LIMIT = _q("limit", "integer", minimum=1, maximum=100)
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation("Liveness"),
    ("GET", "/readyz"): Operation("Readiness of the broker, database and object store"),
    ("GET", "/metrics"): Operation("Prometheus text (TUNELAB_METRICS_TOKEN)", raw="text/plain"),
    ("GET", f"{API}/workspace"): Operation("The token's workspace"),
    ("GET", f"{API}/clusters"): Operation("Clusters, namespaces and inventories", answer=LISTING),
    ("GET", f"{API}/dataset-options"): Operation("Plugins, size categories, languages"),
    ("POST", f"{API}/datasets"): Operation(
        "Create a dataset (multipart upload, or a remote or plugin source)",
        RemoteDataset,
        202,
        forms=("multipart/form-data",),
    ),
    ("GET", f"{API}/datasets"): Operation("List datasets", answer=LISTING),
    ("GET", f"{API}/datasets/{{name}}"): Operation("One dataset"),
    ("DELETE", f"{API}/datasets/{{name}}"): Operation("Delete a dataset"),
    ("POST", f"{API}/datasets/uploads"): Operation(
        "A dataset whose file is PUT to a presigned URL", UploadRequest, 201
    ),
    ("GET", f"{API}/datasets/{{name}}/preview"): Operation(
        "Rows of a ready dataset", query=(LIMIT, _q("split"))
    ),
    ("GET", f"{API}/datasets/{{name}}/export"): Operation(
        "A ready dataset as CSV (pairs) or JSON Lines (conversations)",
        query=(_q("split"),),
        raw="text/csv",
    ),
    ("POST", f"{API}/parameter-groups"): Operation("Create a parameter group", GroupRequest, 201),
    ("GET", f"{API}/parameter-groups"): Operation("List parameter groups", answer=LISTING),
    ("GET", f"{API}/parameter-groups/{{name}}"): Operation("One parameter group"),
    ("DELETE", f"{API}/parameter-groups/{{name}}"): Operation("Delete a parameter group"),
    ("GET", f"{API}/parameter-presets"): Operation("Presets and the parameters' schema"),
    ("POST", f"{API}/experiments"): Operation("Create an experiment", ExperimentRequest, 202),
    ("GET", f"{API}/experiments"): Operation("List experiments", answer=LISTING),
    ("GET", f"{API}/experiments/{{name}}"): Operation("One experiment and its tasks"),
    ("POST", f"{API}/experiments/{{name}}/cancel"): Operation("Cancel an experiment"),
    ("GET", f"{API}/experiments/{{name}}/tasks/{{task}}/metrics"): Operation("A task's metrics"),
    ("GET", f"{API}/experiments/{{name}}/tasks/{{task}}/logs"): Operation(
        "A task's log", raw="text/plain"
    ),
    ("GET", f"{API}/evaluations"): Operation("Evaluation methods", answer=LISTING),
    ("GET", f"{API}/models"): Operation(
        "The model repository", answer=LISTING, query=(_q("kind"),)
    ),
    ("POST", f"{API}/models"): Operation("Register a base model (admins)", RegisterRequest, 201),
    ("GET", f"{API}/models/{{name}}"): Operation("One model"),
    ("GET", f"{API}/models/{{name}}/files"): Operation("A fine-tuned model's files"),
    ("GET", f"{API}/models/{{name}}/download"): Operation(
        "A fine-tuned model's files as one tar", raw="application/x-tar"
    ),
    ("POST", f"{API}/models/{{name}}/merge"): Operation(
        "Merge a LoRA model's adapter into its base: a new full model", MergeRequest, 202
    ),
    ("DELETE", f"{API}/models/{{name}}"): Operation("Delete a model"),
    ("POST", f"{API}/services"): Operation("Deploy a model as a service", DeployRequest, 202),
    ("GET", f"{API}/services"): Operation("List services", answer=LISTING),
    ("GET", f"{API}/services/{{name}}"): Operation("One service"),
    ("DELETE", f"{API}/services/{{name}}"): Operation("Delete a service"),
    ("POST", f"{API}/chat/compare"): Operation("Chat with up to three services", CompareRequest),
    ("POST", f"{API}/chat/feedback"): Operation(
        "Vote for the best answer of a stored comparison", Feedback, 201
    ),
    ("POST", "/v1/chat/completions"): Operation("OpenAI chat completion", ChatRequest),
    ("GET", "/v1/chat/completions"): Operation(
        "Stored chats",
        answer=OPENAI_LIST,
        query=(_q("model"), _q("after"), _q("order", enum=["asc", "desc"]), LIMIT),
    ),
    ("GET", "/v1/chat/completions/{id}"): Operation("One stored chat"),
    ("POST", "/v1/chat/completions/{id}"): Operation("A stored chat's metadata", MetadataUpdate),
    ("DELETE", "/v1/chat/completions/{id}"): Operation("Delete a stored chat"),
    ("GET", "/v1/chat/completions/{id}/messages"): Operation(
        "A stored chat's messages", answer=OPENAI_LIST, query=(_q("after"), LIMIT)
    ),
    ("GET", "/v1/models"): Operation("Ready services, as OpenAI models", answer=OPENAI_LIST),
    ("POST", "/v1/files"): Operation(
        "Upload a file for fine-tuning (a dataset)", forms=("multipart/form-data",)
    ),
    ("GET", "/v1/files"): Operation(
        "Files for fine-tuning",
        answer=OPENAI_LIST,
        query=(
            _q("purpose"),
            _q("after"),
            _q("order", enum=["asc", "desc"]),
            _q("limit", "integer", minimum=1, maximum=10000),
        ),
    ),
    ("GET", "/v1/files/{id}"): Operation("One file"),
    ("DELETE", "/v1/files/{id}"): Operation("Delete a file"),
    ("GET", "/v1/files/{id}/content"): Operation(
        "A file's bytes as uploaded", raw="application/octet-stream"
    ),
    ("POST", "/v1/fine_tuning/jobs"): Operation(
        "Create a fine-tuning job (a one-task experiment)", JobRequest
    ),
    ("GET", "/v1/fine_tuning/jobs"): Operation(
        "Fine-tuning jobs, newest first", answer=OPENAI_LIST, query=(_q("after"), OPENAI_LIMIT)
    ),
    ("GET", "/v1/fine_tuning/jobs/{id}"): Operation("One fine-tuning job"),
    ("POST", "/v1/fine_tuning/jobs/{id}/cancel"): Operation("Cancel a fine-tuning job"),
    ("GET", "/v1/fine_tuning/jobs/{id}/events"): Operation(
        "A job's state changes and training steps, newest first",
        answer=OPENAI_LIST,
        query=(_q("after"), OPENAI_LIMIT),
    ),
    ("GET", "/v1/fine_tuning/jobs/{id}/checkpoints"): Operation(
        "A job's checkpoints with their step's metrics",
        answer=OPENAI_LIST,
        query=(_q("after"), OPENAI_LIMIT),
    ),
    ("GET", f"{API}/usage"): Operation(
        "Usage per service and hour",
        answer=LISTING,
        query=(_q("service"), _q("from", format="date-time"), _q("to", format="date-time")),
    ),
    ("GET", f"{API}/tokens"): Operation("The workspace's tokens (admins)", answer=LISTING),
    ("POST", f"{API}/tokens"): Operation("Make a token (admins)", TokenRequest, 201),
    ("DELETE", f"{API}/tokens/{{name}}"): Operation("Revoke a token (admins)"),
    ("GET", f"{API}/audit"): Operation(
        "Who changed what (admins)", answer=LISTING, query=(LIMIT, _q("before"))
    ),
    ("POST", f"{API}/batches"): Operation(
        "Queue a file of chat requests", ok=202, forms=("multipart/form-data", "application/jsonl")
    ),
    ("GET", f"{API}/batches"): Operation("List batches", answer=LISTING),
    ("GET", f"{API}/batches/{{id}}"): Operation("One batch"),
    ("GET", f"{API}/batches/{{id}}/{{file}}"): Operation(
        "A completed batch's output or errors", raw="application/jsonl"
    ),
    ("POST", "/triggers/s3"): Operation("An S3 event notification (shared secret)"),
    ("GET", f"{API}/events"): Operation(
        "Lifecycle events", answer=LISTING, query=(_q("after"), _q("type"), LIMIT)
    ),
    ("GET", f"{API}/events/stream"): Operation("Lifecycle events, live", raw="text/event-stream"),
    ("POST", f"{API}/webhooks"): Operation("Subscribe a webhook (admins)", WebhookSpec, 201),
    ("GET", f"{API}/webhooks"): Operation("List webhooks (admins)", answer=LISTING),
    ("GET", f"{API}/webhooks/{{name}}"): Operation("One webhook (admins)"),
    ("DELETE", f"{API}/webhooks/{{name}}"): Operation("Delete a webhook (admins)"),
    ("GET", f"{API}/webhooks/{{name}}/deliveries"): Operation("A webhook's deliveries (admins)"),
    ("POST", f"{API}/system/ping"): Operation("Ping every worker kind", PingRequest, 202),
    ("GET", f"{API}/dead-letters"): Operation("Messages that failed for good", answer=LISTING),
}


def _parameters(path: str, op: Operation) -> list[dict[str, Any]]:
    found = []
    for part in path.split("/"):
        if part.startswith("{"):
            name = part.strip("{}")
            schema = NAME if name in ("name", "task") else {"type": "string", "maxLength": 200}
            found.append({"name": name, "in": "path", "required": True, "schema": schema})
    found += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in op.query]
    return found


@lru_cache(maxsize=1)
def openapi() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        error = OPENAI_ERROR if path.startswith("/v1/") else ERROR
        answer: dict[str, Any] = {"description": op.summary}
        if op.raw:
            answer["content"] = {op.raw: {"schema": {"type": "string"}}}
        else:
            answer["content"] = {"application/json": {"schema": op.answer}}
        operation: dict[str, Any] = {
            "summary": op.summary,
            "parameters": _parameters(path, op),
            "responses": {
                str(op.ok): answer,
                "4XX": {
                    "description": "Refused: the error names what and where",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }
        if op.ok != 200:  # a replayed or second answer may be a plain 200
            operation["responses"]["200"] = answer
        if op.body is not None:
            schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[op.body.__name__] = schema
            content = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
            }
            content.update({form: {"schema": {"type": "object"}} for form in op.forms})
            operation["requestBody"] = {"required": True, "content": content}
        elif op.forms:
            operation["requestBody"] = {
                "required": True,
                "content": {form: {"schema": {"type": "object"}} for form in op.forms},
            }
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tunelab",
            "version": "1",
            "description": "Fine-tune language models on your own data and serve them.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(openapi())
