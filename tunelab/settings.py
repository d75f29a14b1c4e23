"""The one typed settings object of a tunelab process, read from `TUNELAB_*` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "tunelab"


class Settings(BaseSettings):
    """Everything a process needs to find its database, broker and object store."""

    model_config = SettingsConfigDict(env_prefix="TUNELAB_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the embedded defaults keep their files (SQLite, objects, Redis)."""

    database_url: str | None = None
    """SQLAlchemy URL; None means SQLite in `data_dir`."""

    redis_url: str | None = None
    """Broker URL; None means `tunelab up` starts a Redis server of its own."""

    store: Literal["local", "s3"] = "local"
    s3_endpoint: str | None = None
    s3_bucket: str = "tunelab"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None

    cpu_queue: str = "tunelab-cpu"
    gpu_queue: str = "tunelab-gpu"
    cpu_worker_processes: int = Field(default=2, ge=1, le=64)
    """CPU worker processes `tunelab up` starts: each has one Dramatiq consumer, which
    acks serially, so a second process roughly doubles no-op throughput."""
    cpu_worker_threads: int = Field(default=4, ge=1, le=64)
    train_worker_threads: int = Field(default=2, ge=1, le=16)
    """Trainings one GPU worker process runs at once. They have a queue of their own
    (`<gpu queue>-train`) and threads of their own, so that hours of training never
    hold up the GPU queue's short events."""
    gpu_worker_threads: int = Field(default=2, ge=1, le=16)
    """Two, so that a handler waiting on the database does not hold up the next event
    (with one, the GPU actor's p99 start latency in bench/events.py was 130-330 ms)."""
    broker_heartbeat_timeout_ms: int = Field(default=60_000, ge=1_000)
    """How long a worker may stay silent before its unacked messages go to another."""
    worker_poll_ms: int = Field(default=10, ge=1, le=5000)
    """How often an idle worker polls Redis; Dramatiq's default of 1 s is too slow."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_workers: int = Field(default=2, ge=1, le=64)
    """API processes on the one port. A Python process answers on one core (its GIL):
    measured, one answered 385 event-publishing POSTs/s on PostgreSQL here, two 700."""

    default_tokenizer: Path | None = None
    """tokenizer.json of the default base model; unset: the built-in tiny tokenizer."""
    model_roots: str = ""
    """Where base models may be registered from, comma-separated: directories on the
    workers and s3:// prefixes (the model cache always; the platform's own object store
    never, since it holds every workspace's data)."""
    metrics_token: str | None = None
    """Bearer token `/metrics` requires (a scraper's, never a workspace's); unset, the
    metrics are off. `tunelab up` makes one, kept in the data dir."""
    model_cache: Path | None = None
    """Where base models are built or downloaded to; unset: `data_dir/models`. Point it
    outside a test's temporary data dir so the built-in model is built once."""
    clusters_file: Path | None = None
    """TOML file declaring clusters, namespaces and inventories; unset: one `local`
    cluster with namespace `default` whose inventory is this machine."""
    distributed_engine: Literal["deepspeed", "ddp"] = "deepspeed"
    """What trains a task over several processes: DeepSpeed ZeRO (stage from the
    parameters) or plain torch DDP."""
    train_time_limit_s: int = Field(default=24 * 3600, ge=60)
    mlflow_uri: str | None = None
    """An MLflow tracking server: each task becomes a run there (tunelab/tracking.py)."""
    public_url: str | None = None
    """Where people reach the console (`https://tunelab.example`): tracked runs link to
    their model there. Unset: http://api_host:api_port."""
    """Longest a training task may run before it is failed."""
    default_block_size: int = Field(default=512, ge=16)
    """Sequence length a question and its answer must fit in (the parameter default)."""

    serving_engine: Literal["auto", "vllm", "transformers"] = "auto"
    """What serves deployed models: vLLM servers, or an in-process transformers engine
    (slower, for machines without vLLM). `auto`: vLLM where `vllm_python` can run it."""
    vllm_python: Path | None = None
    """Interpreter of an environment with vLLM (it pins its own torch, so it often lives
    in a virtualenv of its own); unset: this process's interpreter."""
    vllm_kv_cache_gib: int = Field(default=1, ge=1)
    """KV-cache of a vLLM server on a CPU (VLLM_CPU_KVCACHE_SPACE; whole GiB only)."""
    vllm_max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = 16
    vllm_start_timeout_s: float = Field(default=600.0, gt=0)
    vllm_args: str = ""
    """More arguments for every vLLM server (shell syntax), e.g. `--max-num-seqs 64`."""
    adapters_per_server: int = Field(default=8, ge=1, le=256)
    """LoRA services one base-model server holds before another server is started."""
    serving_overhead_gib: float = Field(default=2.0, ge=0)
    """Memory a model server needs beside weights and KV-cache (runtime, buffers)."""
    chat_timeout_s: float = Field(default=600.0, gt=0)
    """Longest a chat may take, waiting for a restarting server included."""
    chat_retention_days: float = Field(default=30.0, gt=0)
    """How long a stored chat (`store: true`) is kept before it is deleted."""
    batch_requests_per_server: int = Field(default=4, ge=1, le=1024)
    """Requests of batches one model server answers at once, across all CPU workers:
    interactive chats keep the rest of its capacity."""
    traffic_flush_s: float = Field(default=2.0, gt=0, le=300)
    """How often usage counts and stored chats are written to the database."""
    token_cache_s: float = Field(default=5.0, ge=0, le=300)
    """How long a verified API token is trusted without asking the database again:
    a revoked token is refused at most this long after."""

    backend: Literal["local", "kubernetes"] = "local"
    """Where training tasks and model servers run: processes of the GPU workers on this
    machine, or Jobs and Deployments on a Kubernetes cluster (the namespace of each
    experiment or service)."""
    kube_config: Path | None = None
    """kubeconfig file of the cluster; unset: the pod's in-cluster service account."""
    kube_image: str = "tunelab-gpu:latest"
    """Image of training pods: tunelab with the `gpu` extra (infra/Dockerfile)."""
    kube_vllm_image: str = "vllm/vllm-openai:v0.11.0"
    """Image of model servers: vLLM's OpenAI-compatible server."""
    kube_env_from: str = "tunelab-config,tunelab-secrets"
    """ConfigMap and Secret (comma-separated; a name ending in `-secrets` is a Secret)
    whose TUNELAB_* values pods need to reach Redis, PostgreSQL and the object store;
    they must exist in every namespace tasks and services run in."""
    kube_gpu_node_selector: str = "nvidia.com/gpu.present=true"
    """Node labels (k=v, comma-separated) of GPU nodes for pods that ask for GPUs."""
    kube_backoff_limit: int = Field(default=3, ge=0, le=100)
    """Pods a training Job starts again after faults (not after the user's errors)."""
    kube_agent_port: int = Field(default=8001, ge=1, le=65535)
    """Port of the adapter sidecar in every model-server pod."""
    kube_start_timeout_s: float = Field(default=1800.0, gt=0)
    """Longest a model service waits for a ready replica before it fails with the reason."""
    kube_poll_s: float = Field(default=2.0, gt=0)
    """How often the Kubernetes reconciler reads Jobs, Deployments and their pods."""
    kube_server_url: str = "http://{name}.{namespace}.svc:{port}"
    """How the API reaches a model server's Kubernetes Service ({name}, {namespace} and
    {port} are filled in): its cluster DNS name, load-balanced over the ready replicas.
    An API outside the cluster points this at whatever exposes the Services."""

    allow_private_sources: bool = False
    """Let datasets be fetched from loopback and private networks (off: SSRF)."""
    source_timeout_s: float = Field(default=60.0, gt=0)
    s3_trigger_secret: str | None = None
    """Shared secret that `POST /triggers/s3` requires; unset disables the trigger."""

    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_allow_private: bool = False
    """Let webhooks target loopback and private networks (off: SSRF)."""
    webhook_max_retries: int = Field(default=8, ge=0)
    webhook_min_backoff_ms: int = Field(default=1000, ge=1)
    webhook_max_backoff_ms: int = Field(default=600_000, ge=1)

    @model_validator(mode="after")
    def _s3_needs_endpoint_or_aws(self) -> Settings:
        if self.store == "s3" and not self.s3_bucket:
            raise ValueError("TUNELAB_S3_BUCKET is required when TUNELAB_STORE=s3")
        return self

    @property
    def train_queue(self) -> str:
        return f"{self.gpu_queue}-train"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tunelab.db'}"


class SettingsError(RuntimeError):
    """A TUNELAB_* variable is missing or malformed."""


def load_settings() -> Settings:
    """Read the environment; raise SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TUNELAB_{'_'.join(str(p) for p in err['loc']).upper() or '?'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
