"""OpenAI's fine-tuning API in tunelab's terms: a job request becomes a one-task
experiment with a parameter group of its own, and tunelab's states and names are shown
as OpenAI shows them (`ft:<base>:<workspace>:<suffix>:<id>`).

What OpenAI calls a file is a tunelab dataset named `file-...`; a job is an experiment
named `ftjob-...` (and its group of the same name), so both are visible, and usable, from
the native API and the console too.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunelab.db.tables import FineTuningJob, Task, Workspace
from tunelab.lifecycle.states import ExperimentState
from tunelab.names import Name
from tunelab.params import Parameters, presets
from tunelab.scoring import METHODS, PREFERENCE_ACCURACY

FILE_PREFIX, JOB_PREFIX = "file-", "ftjob-"
FILE_ID = re.compile(r"file-[0-9a-f]{24}")
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")
TASK = "train"
"""The one task of a job's experiment."""
DEFAULT_PRESET = "seed-defaults"


def new_file_id() -> str:
    return FILE_PREFIX + secrets.token_hex(12)


def new_job_id() -> str:
    return JOB_PREFIX + secrets.token_hex(12)


def _auto_is_unset(value: Any) -> Any:
    return None if value == "auto" else value


def _auto(inner: Any) -> Any:
    """A value or OpenAI's "auto" (kept as None): one nullable type, so that a refusal
    names the field itself rather than a branch of a union."""
    return Annotated[inner | None, BeforeValidator(_auto_is_unset)]


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters; "auto" (or absent) keeps the preset's value."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: _auto(Annotated[int, Field(ge=1, le=1000)]) = None  # type: ignore[valid-type]
    batch_size: _auto(Annotated[int, Field(ge=1, le=4096)]) = None  # type: ignore[valid-type]
    learning_rate_multiplier: _auto(Annotated[float, Field(gt=0.0, le=100.0)]) = None  # type: ignore[valid-type]
    beta: _auto(Annotated[float, Field(gt=0.0, le=10.0)]) = None  # type: ignore[valid-type]
    """DPO only: how far from the reference model the preference may pull."""


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo"]
    """OpenAI's `reinforcement` needs graders tunelab does not have."""
    supervised: Supervised | None = None
    dpo: Supervised | None = None

    @model_validator(mode="after")
    def _beta_is_dpo(self) -> Method:
        given = self.supervised
        if given is not None and given.hyperparameters.beta is not None:
            raise ValueError("beta is a DPO hyperparameter (method.dpo.hyperparameters.beta)")
        return self

    @property
    def hyperparameters(self) -> Hyperparameters:
        chosen = self.dpo if self.type == "dpo" else self.supervised
        return chosen.hyperparameters if chosen else Hyperparameters()


Suffix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobRequest(BaseModel):
    """`POST /v1/fine_tuning/jobs`, as OpenAI's SDK sends it, and tunelab's extensions
    (`preset`, `evaluation`, `deploy`)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    """A model of the repository (GET /api/v1/models), a base or a model to continue,
    or a job's `ft:` name (continued)."""
    training_file: str = Field(pattern=FILE_ID.pattern)
    validation_file: str | None = Field(default=None, pattern=FILE_ID.pattern)
    suffix: Suffix | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    """OpenAI's older place for them; `method` wins where both are given."""
    method: Method | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = None
    """OpenAI's W&B integration: tunelab's tracking is MLflow (TUNELAB_MLFLOW_URI)."""
    preset: str = DEFAULT_PRESET
    """tunelab: the parameter preset whose values "auto" means."""
    evaluation: str | None = None
    """tunelab: how the model is scored; perplexity (supervised) or preference accuracy
    (dpo) unless named."""
    deploy: bool | Name = False
    """tunelab: deploy the fine-tuned model when the job succeeds, as a service named
    after the job (True) or as this name."""

    @model_validator(mode="after")
    def _known(self) -> JobRequest:
        if self.preset not in presets():
            raise ValueError(f"preset: no preset {self.preset!r}; presets: {sorted(presets())}")
        if self.evaluation is not None and self.evaluation not in METHODS:
            raise ValueError(f"evaluation: no method {self.evaluation!r}; {sorted(METHODS)}")
        if self.integrations:
            raise ValueError(
                "integrations: tunelab reports to MLflow (TUNELAB_MLFLOW_URI), not W&B"
            )
        if self.method is None and self.hyperparameters and self.hyperparameters.beta is not None:
            raise ValueError("hyperparameters.beta: beta needs method {'type': 'dpo'}")
        return self

    @property
    def kind(self) -> Literal["supervised", "dpo"]:
        return self.method.type if self.method else "supervised"

    @property
    def given(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.hyperparameters
        return self.hyperparameters or Hyperparameters()

    @property
    def hyperparameters_field(self) -> str:
        """Where the request holds its hyperparameters, to name in refusals."""
        if self.method is not None:
            return f"method.{self.method.type}.hyperparameters"
        return "hyperparameters"

    def scored_by(self) -> str:
        if self.evaluation:
            return self.evaluation
        return PREFERENCE_ACCURACY if self.kind == "dpo" else "perplexity"


PARAMETER_OF = {
    "n_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate_multiplier": "learning_rate",
    "beta": "dpo_beta",
}


def group_values(request: JobRequest) -> dict[str, Any]:
    """The parameter group's values: the preset's, with what the request gives on top
    (a learning-rate multiplier scales the preset's rate)."""
    base = Parameters.model_validate(presets()[request.preset]["parameters"])
    values: dict[str, Any] = {"finetune_type": "DPO" if request.kind == "dpo" else "SFT"}
    given = request.given
    if given.n_epochs is not None:
        values["epochs"] = given.n_epochs
    if given.batch_size is not None:
        values["batch_size"] = given.batch_size
    if given.learning_rate_multiplier is not None:
        values["learning_rate"] = base.learning_rate * given.learning_rate_multiplier
    if given.beta is not None:
        values["dpo_beta"] = given.beta
    if request.seed is not None:
        values["seed"] = request.seed
    return values


def request_field(field: str, request: JobRequest) -> str:
    """A native refusal's field (`tasks[0].dataset`) as the job request names it."""
    if field.startswith("tasks[0].overrides.") or field.startswith("parameters."):
        name = field.rsplit(".", 1)[-1]
        reverse = {v: k for k, v in PARAMETER_OF.items()}
        if name == "seed":
            return "seed"
        return f"{request.hyperparameters_field}.{reverse.get(name, name)}"
    return JOB_FIELD_OF.get(field, field)


JOB_FIELD_OF = {
    "tasks[0].base_model": "model",
    "tasks[0].dataset": "training_file",
    "tasks[0].validation_dataset": "validation_file",
}
"""The job request's name of a field of its one-task experiment's."""


def shown_hyperparameters(parameters: dict[str, Any], request: JobRequest) -> dict[str, Any]:
    """What the job trains with, in OpenAI's names (the multiplier as it was given)."""
    given = request.given.learning_rate_multiplier
    shown: dict[str, Any] = {
        "n_epochs": parameters.get("epochs"),
        "batch_size": parameters.get("batch_size"),
        "learning_rate_multiplier": 1.0 if given is None else given,
    }
    if request.kind == "dpo":
        shown["beta"] = parameters.get("dpo_beta")
    return shown


STATUS = {
    ExperimentState.QUEUED: "queued",
    ExperimentState.RUNNING: "running",
    ExperimentState.SUCCEEDED: "succeeded",
    ExperimentState.FAILED: "failed",
    ExperimentState.CANCELLED: "cancelled",
}


def ft_model_name(model: str, workspace: str, suffix: str | None, job_id: str) -> str:
    """The fine-tuned model's name as OpenAI spells it, from the job's `model`: a
    continued `ft:` model's is named after the base it came from, as OpenAI names it;
    the job's id makes it unique."""
    base = model.split(":")[1] if model.startswith("ft:") else model
    return f"ft:{base}:{workspace}:{suffix or ''}:{job_id.removeprefix(JOB_PREFIX)}"


def job_of_model_name(name: str) -> str | None:
    """The job id an `ft:` model name (not a checkpoint's) stands for, else None."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "ft":
        return None
    job = JOB_PREFIX + parts[4]
    return job if JOB_ID.fullmatch(job) else None


def job_task(session: Session, job: FineTuningJob) -> Task | None:
    """The one task of the job's experiment (None before it has one, or once it is
    gone)."""
    if job.experiment_id is None:
        return None
    return session.scalar(
        select(Task).where(Task.experiment_id == job.experiment_id, Task.name == TASK)
    )


def job_model_name(session: Session, job: FineTuningJob) -> str:
    """The job's model as OpenAI names it: `ft:<base>:<workspace>:<suffix>:<id>`."""
    workspace = session.get(Workspace, job.workspace_id)
    owner = workspace.name if workspace is not None else job.workspace_id
    return ft_model_name(job.spec["model"], owner, job.spec.get("suffix"), job.id)


def service_name(job: FineTuningJob) -> str | None:
    """The service the job deploys its model as, if it asked for one."""
    deploy = job.spec.get("deploy")
    if not deploy:
        return None
    return deploy if isinstance(deploy, str) else job.id
