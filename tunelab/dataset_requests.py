"""What a request that brings a dataset in may say: its metadata, and where its file is
(an upload, a URI, or a plugin that makes it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from tunelab.dataset_rules import PREFERENCE_MAPPING, QA_MAPPING, SIZE_CATEGORIES
from tunelab.names import Name
from tunelab.plugins import available as available_plugins


class DatasetTask(BaseModel):
    """What the dataset is for (SPEC.md §2)."""

    model_config = ConfigDict(extra="forbid")
    type: str = "question-answering"
    subtypes: list[str] = Field(default_factory=list)


Column = Annotated[str, Field(min_length=1)]


class FeatureMapping(BaseModel):
    """Which CSV columns hold the fields: question and answer, or (for a preference
    dataset, what DPO trains on) prompt, chosen and rejected."""

    model_config = ConfigDict(extra="forbid")
    question: Column | None = None
    answer: Column | None = None
    prompt: Column | None = None
    chosen: Column | None = None
    rejected: Column | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> FeatureMapping:
        given = {k for k, v in vars(self).items() if v is not None}
        preference = given & set(PREFERENCE_MAPPING)
        if preference and given & set(QA_MAPPING):
            raise ValueError("map question and answer, or prompt, chosen and rejected, not both")
        defaults = PREFERENCE_MAPPING if preference else QA_MAPPING
        for name, column in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, column)
        columns = [getattr(self, name) for name in defaults]
        if len(set(columns)) < len(columns):
            raise ValueError(f"{', '.join(defaults)} must be different columns")
        return self

    @model_serializer
    def _mapped(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


class DatasetMetadata(BaseModel):
    """The user's description of a dataset (SPEC.md §2)."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    language: Literal["zh", "en"] = "en"
    cluster: Name = "local"
    namespace: Name = "default"
    license: str | None = None
    size_category: str | None = None
    task: DatasetTask = Field(default_factory=DatasetTask)
    feature_mapping: FeatureMapping = Field(default_factory=FeatureMapping)
    format: Literal["auto", "csv", "openai", "sharegpt", "alpaca", "preference"] = "auto"
    """What the files hold: a Q&A or preference CSV (with `feature_mapping`),
    conversations in OpenAI chat, ShareGPT or Alpaca JSON Lines, or preference pairs in
    OpenAI's preference JSON Lines. auto: the file name's extension (.csv, .jsonl,
    .json) and then its content tell."""

    @field_validator("size_category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        if value is not None and value not in SIZE_CATEGORIES:
            raise ValueError(f"must be one of {list(SIZE_CATEGORIES)}")
        return value


class RemoteSource(BaseModel):
    """A file elsewhere (`s3`, `http`), or one the client already put in the platform's
    bucket under its workspace's `uploads/` prefix (`upload`, a key or an s3 URI)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["s3", "http", "upload"]
    uri: str
    validate_uri: str | None = None
    test_uri: str | None = None

    @field_validator("uri", "validate_uri", "test_uri")
    @classmethod
    def _scheme(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        wanted = {
            "s3": ("s3://",),
            "http": ("http://", "https://"),
            "upload": ("uploads/", "s3://"),
        }[info.data.get("type", "http")]
        if not value.startswith(wanted) or len(value) <= len(wanted[0]):
            raise ValueError(f"must start with {' or '.join(wanted)}")
        return value


class PluginSourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["plugin"]
    plugin: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("plugin")
    @classmethod
    def _installed(cls, value: str) -> str:
        if value not in available_plugins():
            raise ValueError(f"no plugin {value!r}; installed: {sorted(available_plugins())}")
        return value


class ChatsSourceSpec(BaseModel):
    """The workspace's stored chats as data: with `kind` preference, each voted
    comparison (POST /api/v1/chat/feedback) gives a pair per other answer, the voted
    answer chosen; with sft, each stored chat is a conversation."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["chats"]
    kind: Literal["preference", "sft"] = "preference"
    service: Name | None = None
    """Only chats with this service (for preferences: comparisons it took part in)."""
    since: datetime | None = Field(default=None, alias="from")
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """In UTC (without an offset: UTC), as stored chats' times are compared."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RemoteDataset(DatasetMetadata):
    source: Annotated[
        RemoteSource | PluginSourceSpec | ChatsSourceSpec, Field(discriminator="type")
    ]


class UploadRequest(DatasetMetadata):
    filename: str = Field(default="train.csv", pattern=r"^[\w.\- ]{1,128}$")
