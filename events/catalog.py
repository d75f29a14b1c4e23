"""Every event type, parsed through one discriminated union, and who consumes each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, TypeAdapter

from tunelab.events.batch import BatchCompleted, BatchCreated, BatchFailed
from tunelab.events.dataset import DatasetFailed, DatasetUploaded, DatasetValidated
from tunelab.events.envelope import Event
from tunelab.events.experiment import (
    ExperimentCancelled,
    ExperimentCreated,
    ExperimentFailed,
    ExperimentSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    TaskScheduled,
    TaskSucceeded,
)
from tunelab.events.fine_tuning import (
    FineTuningJobCancelled,
    FineTuningJobFailed,
    FineTuningJobSucceeded,
)
from tunelab.events.model import ModelDeleted, ModelMergeRequested, ModelRegistered
from tunelab.events.service import (
    ServiceDeleted,
    ServiceDeployRequested,
    ServiceFailed,
    ServicePlaced,
    ServiceReady,
)
from tunelab.events.system import MessageDead, Ping, Pong

AnyEvent = Annotated[
    DatasetUploaded
    | DatasetValidated
    | DatasetFailed
    | ExperimentCreated
    | ExperimentCancelled
    | ExperimentSucceeded
    | ExperimentFailed
    | TaskScheduled
    | TaskProgress
    | TaskSucceeded
    | TaskFailed
    | TaskCancelled
    | FineTuningJobSucceeded
    | FineTuningJobFailed
    | FineTuningJobCancelled
    | ModelRegistered
    | ModelDeleted
    | ModelMergeRequested
    | ServiceDeployRequested
    | ServicePlaced
    | ServiceReady
    | ServiceFailed
    | ServiceDeleted
    | BatchCreated
    | BatchCompleted
    | BatchFailed
    | Ping
    | Pong
    | MessageDead,
    Field(discriminator="type"),
]
EVENT_CLASSES: tuple[type[Event], ...] = get_args(get_args(AnyEvent)[0])
_adapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)
EVENT_TYPES: tuple[str, ...] = tuple(cls.model_fields["type"].default for cls in EVENT_CLASSES)


def parse_event(obj: dict[str, Any] | str | bytes) -> Event:
    """Parse a message body into its event class; raises pydantic.ValidationError."""
    if isinstance(obj, dict):
        return _adapter.validate_python(obj)  # type: ignore[no-any-return]
    return _adapter.validate_json(obj)  # type: ignore[no-any-return]


WorkerKind = Literal["cpu", "gpu", "train"]
"""Where an actor runs: the CPU workers, or the GPU workers, whose trainings ("train")
have a queue of their own. Chats are not events: they go from the API straight to the
model servers (tunelab.serving)."""


@dataclass(frozen=True)
class Route:
    actor: str
    worker: WorkerKind
    backend: Literal["local", "kubernetes"] | None = None
    """Only with this deployment backend (TUNELAB_BACKEND); None: with either."""


# Which actors consume which event. Kept as data so the HTTP functions can publish
# without importing worker code; `workers.registry` refuses an actor that is not listed.
ROUTES: dict[str, tuple[Route, ...]] = {
    "dataset.uploaded": (Route("ingest_dataset", "cpu"),),
    # A fine-tuning job asked for before its files were processed starts (or fails).
    "dataset.validated": (Route("start_jobs_on_validated", "cpu"),),
    "dataset.failed": (Route("start_jobs_on_failed", "cpu"),),
    # Whenever resources may have freed up or new tasks wait, the scheduler looks again.
    "experiment.created": (Route("schedule_on_created", "cpu"),),
    # On Kubernetes a task is a Job that trains in its own pod; locally a GPU worker
    # trains it in a process of its own.
    "task.scheduled": (
        Route("train_task", "train", "local"),
        Route("submit_task_job", "cpu", "kubernetes"),
    ),
    "task.succeeded": (Route("finish_on_succeeded", "cpu"),),
    "task.failed": (Route("finish_on_failed", "cpu"),),
    "task.cancelled": (Route("finish_on_cancelled", "cpu"),),
    "service.deploy_requested": (
        Route("place_service", "gpu", "local"),
        Route("deploy_service_on_kubernetes", "cpu", "kubernetes"),
    ),
    # Servers are kept by a reconciler (the GPU workers' locally, the CPU workers' on
    # Kubernetes); these events only wake it.
    "service.placed": (Route("wake_servers_on_placed", "gpu", "local"),),
    "service.deleted": (
        Route("wake_servers_on_deleted", "gpu", "local"),
        Route("wake_kube_on_deleted", "cpu", "kubernetes"),
    ),
    # A job of OpenAI's fine-tuning API says how it ended, under OpenAI's names, and
    # deploys its model when it asked to.
    "experiment.succeeded": (Route("follow_job_on_succeeded", "cpu"),),
    "experiment.failed": (Route("follow_job_on_failed", "cpu"),),
    "experiment.cancelled": (
        Route("schedule_on_cancelled", "cpu"),
        Route("delete_cancelled_jobs", "cpu", "kubernetes"),
        Route("follow_job_on_cancelled", "cpu"),
    ),
    "batch.created": (Route("run_batch", "cpu"),),
    # Merging loads the model whole: the GPU workers' (the CPU workers' image has no
    # torch). On Kubernetes the API refuses it for now.
    "model.merge_requested": (Route("merge_model", "train", "local"),),
    "system.ping": (Route("answer_ping_cpu", "cpu"), Route("answer_ping_gpu", "gpu")),
}
