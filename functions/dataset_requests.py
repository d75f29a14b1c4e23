"""What a request that brings a dataset in may say: its metadata, and where its file is
(an upload, a URI, or a plugin that makes it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.dataset_rules import SIZE_CATEGORIES
from tunelab.names import Name
from tunelab.plugins import available as available_plugins


class DatasetTask(BaseModel):
    """What the dataset is for (SPEC.md §2)."""

    model_config = ConfigDict(extra="forbid")
    type: str = "question-answering"
    subtypes: list[str] = Field(default_factory=list)


class FeatureMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(default="question", min_length=1)
    answer: str = Field(default="answer", min_length=1)

    @model_validator(mode="after")
    def _two_columns(self) -> FeatureMapping:
        if self.question == self.answer:
            raise ValueError("question and answer must be different columns")
        return self


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
    format: Literal["auto", "csv", "openai", "sharegpt", "alpaca"] = "auto"
    """What the files hold: a Q&A CSV (with `feature_mapping`), or conversations in
    OpenAI chat, ShareGPT or Alpaca JSON Lines. auto: the file name's extension (.csv,
    .jsonl, .json) and then its content tell."""

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


class RemoteDataset(DatasetMetadata):
    source: Annotated[RemoteSource | PluginSourceSpec, Field(discriminator="type")]


class UploadRequest(DatasetMetadata):
    filename: str = Field(default="train.csv", pattern=r"^[\w.\- ]{1,128}$")
