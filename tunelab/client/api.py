"""Every endpoint of the native API as a call (tunelab.client.calls), grouped as the API
groups them. Requests are the server's own models (validated here before they are
sent, with the server's messages); answers are read into tunelab.views, which the
server checks its answers against."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tunelab.api_requests import CompareRequest, Feedback, GroupRequest, TokenRequest
from tunelab.client.calls import Call, Multipart
from tunelab.dataset_requests import DatasetMetadata, RemoteDataset
from tunelab.experiment_rules import ExperimentRequest
from tunelab.serving_rules import DeployRequest
from tunelab.views import (
    DatasetView,
    ExperimentView,
    GroupView,
    ModelView,
    ServiceView,
    View,
)

T = TypeVar("T")
V = TypeVar("V", bound=View)
Rows = list[dict[str, Any]]
Send = Callable[[Call[Any]], Any]
"""Sends a call: at once (Client) or as an awaitable (AsyncClient)."""


def _one(view: type[V]) -> Callable[[httpx.Response], V]:
    return lambda response: view.read(response.json())


def _many(view: type[V]) -> Callable[[httpx.Response], list[V]]:
    return lambda response: [view.read(item) for item in response.json()["items"]]


class Namespace:
    def __init__(self, send: Send) -> None:
        self._send = send

    def _call(self, call: Call[T]) -> T:
        # Typed as the sync client answers; the async client's send answers an
        # awaitable of the same (tunelab.client.AsyncClient).
        return self._send(call)  # type: ignore[no-any-return]


class Datasets(Namespace):
    def list(self) -> list[DatasetView]:
        return self._call(Call("GET", "/api/v1/datasets", read=_many(DatasetView)))

    def get(self, name: str) -> DatasetView:
        return self._call(Call("GET", f"/api/v1/datasets/{name}", read=_one(DatasetView)))

    def upload(
        self,
        name: str,
        file: str | Path,
        validate: str | Path | None = None,
        test: str | Path | None = None,
        on_bytes: Callable[[int], None] | None = None,
        **metadata: Any,
    ) -> DatasetView:
        """Upload the files (train, and validate/test splits); `on_bytes` hears how many
        bytes went, as they go. The dataset is then checked: `get` until it is ready."""
        spec = DatasetMetadata.model_validate({"name": name, **metadata})
        paths = {"file": file, "validate": validate, "test": test}
        files = {part: Path(p) for part, p in paths.items() if p}
        body = Multipart(files, {"metadata": spec.model_dump_json(exclude_unset=True)}, on_bytes)
        return self._call(
            Call(
                "POST",
                "/api/v1/datasets",
                content=iter(body),
                headers=body.headers,
                read=_one(DatasetView),
            )
        )

    def create(self, spec: RemoteDataset | dict[str, Any]) -> DatasetView:
        """A dataset from a URI, a plugin or stored chats (no file sent)."""
        body = RemoteDataset.model_validate(spec).model_dump(
            mode="json", exclude_unset=True, by_alias=True
        )
        return self._call(Call("POST", "/api/v1/datasets", json=body, read=_one(DatasetView)))

    def delete(self, name: str) -> dict[str, Any]:
        return self._call(Call("DELETE", f"/api/v1/datasets/{name}"))


class ParameterGroups(Namespace):
    def list(self) -> list[GroupView]:
        return self._call(Call("GET", "/api/v1/parameter-groups", read=_many(GroupView)))

    def get(self, name: str) -> GroupView:
        return self._call(Call("GET", f"/api/v1/parameter-groups/{name}", read=_one(GroupView)))

    def create(self, spec: GroupRequest | dict[str, Any]) -> GroupView:
        body = GroupRequest.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/parameter-groups", json=body, read=_one(GroupView)))

    def delete(self, name: str) -> dict[str, Any]:
        return self._call(Call("DELETE", f"/api/v1/parameter-groups/{name}"))

    def presets(self) -> dict[str, Any]:
        return self._call(Call("GET", "/api/v1/parameter-presets"))


class Experiments(Namespace):
    def list(self) -> list[ExperimentView]:
        return self._call(Call("GET", "/api/v1/experiments", read=_many(ExperimentView)))

    def get(self, name: str) -> ExperimentView:
        return self._call(Call("GET", f"/api/v1/experiments/{name}", read=_one(ExperimentView)))

    def create(self, spec: ExperimentRequest | dict[str, Any]) -> ExperimentView:
        body = ExperimentRequest.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/experiments", json=body, read=_one(ExperimentView)))

    def cancel(self, name: str) -> ExperimentView:
        return self._call(
            Call("POST", f"/api/v1/experiments/{name}/cancel", read=_one(ExperimentView))
        )

    def metrics(self, name: str, task: str) -> Rows:
        return self._call(
            Call(
                "GET",
                f"/api/v1/experiments/{name}/tasks/{task}/metrics",
                read=lambda r: r.json()["points"],
            )
        )

    def logs(self, name: str, task: str) -> str:
        return self._call(
            Call("GET", f"/api/v1/experiments/{name}/tasks/{task}/logs", read=lambda r: r.text)
        )


class Models(Namespace):
    def list(self, kind: str | None = None) -> list[ModelView]:
        return self._call(
            Call("GET", "/api/v1/models", params={"kind": kind}, read=_many(ModelView))
        )

    def get(self, name: str) -> ModelView:
        return self._call(Call("GET", f"/api/v1/models/{name}", read=_one(ModelView)))

    def files(self, name: str) -> Rows:
        return self._call(
            Call("GET", f"/api/v1/models/{name}/files", read=lambda r: r.json()["files"])
        )

    def download(self, name: str, read: Callable[[httpx.Response], Any]) -> Any:
        """The model's files as a tar stream, given to `read` unread (it writes them)."""
        return self._call(Call("GET", f"/api/v1/models/{name}/download", read=read, stream=True))

    def merge(self, name: str, into: str | None = None) -> ModelView:
        return self._call(
            Call(
                "POST",
                f"/api/v1/models/{name}/merge",
                json={"name": into} if into else {},
                read=_one(ModelView),
            )
        )

    def delete(self, name: str) -> dict[str, Any]:
        return self._call(Call("DELETE", f"/api/v1/models/{name}"))


class Services(Namespace):
    def list(self) -> list[ServiceView]:
        return self._call(Call("GET", "/api/v1/services", read=_many(ServiceView)))

    def get(self, name: str) -> ServiceView:
        return self._call(Call("GET", f"/api/v1/services/{name}", read=_one(ServiceView)))

    def create(self, spec: DeployRequest | dict[str, Any]) -> ServiceView:
        body = DeployRequest.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/services", json=body, read=_one(ServiceView)))

    def delete(self, name: str) -> dict[str, Any]:
        return self._call(Call("DELETE", f"/api/v1/services/{name}"))


class Chat(Namespace):
    def compare(self, spec: CompareRequest | dict[str, Any]) -> dict[str, Any]:
        """Up to three services' answers to one conversation."""
        body = CompareRequest.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/chat/compare", json=body))

    def complete(
        self, service: str, messages: list[dict[str, str]], **sampling: Any
    ) -> dict[str, Any]:
        """One OpenAI chat completion from a service."""
        body = {"model": service, "messages": messages, **sampling}
        return self._call(Call("POST", "/v1/chat/completions", json=body))

    def stream(
        self,
        service: str,
        messages: list[dict[str, str]],
        read: Callable[[httpx.Response], Any],
        **sampling: Any,
    ) -> Any:
        """A streamed completion, its response given to `read` unread."""
        body = {"model": service, "messages": messages, "stream": True, **sampling}
        return self._call(Call("POST", "/v1/chat/completions", json=body, read=read, stream=True))

    def feedback(self, spec: Feedback | dict[str, Any]) -> dict[str, Any]:
        body = Feedback.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/chat/feedback", json=body))


class Batches(Namespace):
    def create(self, file: str | Path, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        fields = {"metadata": json.dumps(metadata)} if metadata else {}
        body = Multipart({"file": Path(file)}, fields)
        return self._call(Call("POST", "/api/v1/batches", content=iter(body), headers=body.headers))

    def list(self) -> Rows:
        return self._call(Call("GET", "/api/v1/batches", read=lambda r: r.json()["items"]))

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._call(Call("GET", f"/api/v1/batches/{batch_id}"))

    def output(self, batch_id: str, file: str = "output") -> str:
        return self._call(Call("GET", f"/api/v1/batches/{batch_id}/{file}", read=lambda r: r.text))


class Usage(Namespace):
    def get(
        self, service: str | None = None, since: str | None = None, until: str | None = None
    ) -> Rows:
        params = {"service": service, "from": since, "to": until}
        return self._call(
            Call("GET", "/api/v1/usage", params=params, read=lambda r: r.json()["items"])
        )


class Tokens(Namespace):
    def list(self) -> Rows:
        return self._call(Call("GET", "/api/v1/tokens", read=lambda r: r.json()["items"]))

    def create(self, spec: TokenRequest | dict[str, Any]) -> dict[str, Any]:
        body = TokenRequest.model_validate(spec).model_dump(mode="json", exclude_unset=True)
        return self._call(Call("POST", "/api/v1/tokens", json=body))

    def revoke(self, name: str) -> dict[str, Any]:
        return self._call(Call("DELETE", f"/api/v1/tokens/{name}"))


class Api(Namespace):
    """The namespaces over one way of sending."""

    def __init__(self, send: Send) -> None:
        super().__init__(send)
        self.datasets = Datasets(send)
        self.parameter_groups = ParameterGroups(send)
        self.experiments = Experiments(send)
        self.models = Models(send)
        self.services = Services(send)
        self.chat = Chat(send)
        self.batches = Batches(send)
        self.usage = Usage(send)
        self.tokens = Tokens(send)

    def workspace(self) -> dict[str, Any]:
        return self._call(Call("GET", "/api/v1/workspace"))

    def events(self, after: str | None = None, types: str | None = None, limit: int = 1000) -> Rows:
        """Lifecycle events, newest first (after the event `after`, if given)."""
        params = {"after": after, "type": types, "limit": limit}
        return self._call(
            Call("GET", "/api/v1/events", params=params, read=lambda r: r.json()["items"])
        )
