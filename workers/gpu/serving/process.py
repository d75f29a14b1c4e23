"""Starting and stopping one model server process: vLLM's OpenAI server, or tunelab's
transformers fallback with the same HTTP API."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tunelab.processes import die_with_parent
from tunelab.serving.served import SERVED_NAME
from tunelab.settings import Settings

log = logging.getLogger("tunelab.serving")


class ServerFailed(RuntimeError):
    """A server process exited or never became healthy; the message holds its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, settings: Settings, engine: str, model_dir: Path, workdir: Path) -> None:
        self.settings, self.engine, self.model_dir = settings, engine, model_dir
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.sockets = tempfile.mkdtemp(prefix="tunelab-srv-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        base = ["--model", str(self.model_dir), "--served-model-name", SERVED_NAME]
        base += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.engine == "transformers":
            return [sys.executable, "-m", "tunelab.workers.gpu.serving.hf_server", *base]
        python = str(self.settings.vllm_python or sys.executable)
        return [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *base,
            "--dtype",
            "float32",  # bf16 falls back to slow kernels on CPUs without AMX/AVX-512
            "--enforce-eager",  # torch.compile warm-up costs a minute per start
            "--enable-lora",
            "--max-lora-rank",
            str(self.settings.vllm_max_lora_rank),
            "--max-loras",
            str(min(4, self.settings.adapters_per_server)),
            "--max-cpu-loras",
            str(self.settings.adapters_per_server),
            *shlex.split(self.settings.vllm_args),
        ]

    def environment(self) -> dict[str, str]:
        cache = self.workdir / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        # vLLM runs the system's tools (lscpu) whatever PATH the worker was given.
        path = os.environ.get("PATH", "").split(os.pathsep)
        path += [d for d in [*os.defpath.split(os.pathsep), "/usr/bin", "/bin"] if d not in path]
        return {
            **os.environ,
            "PATH": os.pathsep.join(p for p in path if p),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(self.settings.vllm_kv_cache_gib),
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            # Its ZeroMQ sockets live here: a Unix socket path has at most 107 bytes.
            "VLLM_RPC_BASE_PATH": self.sockets,
            "TMPDIR": self.sockets,
            "HF_HOME": str(cache / "hf"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }

    def start(self, heartbeat: Callable[[], None] = lambda: None) -> None:
        """Start the process and wait until it answers /health, calling `heartbeat`
        meanwhile (a start takes longer than a lease lives)."""
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        logfile = (self.workdir / "server.log").open("ab")
        log.info("starting %s server for %s on port %d", self.engine, self.model_dir, self.port)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # its own group: stop() takes vLLM's engine process too
            preexec_fn=die_with_parent,
        )
        logfile.close()
        deadline = time.monotonic() + self.settings.vllm_start_timeout_s
        while time.monotonic() < deadline:
            heartbeat()
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited ({self.proc.returncode}): {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"the server did not become healthy in time: {self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Whatever the group left behind (vLLM's engine core) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def tail(self, lines: int = 15) -> str:
        path = self.workdir / "server.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def load_adapter(self, name: str, path: Path) -> None:
        reply = httpx.post(
            f"{self.url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(path)},
            timeout=120,
        )
        if reply.status_code != 200:
            raise ServerFailed(f"loading adapter {name} failed: {reply.text[:500]}")

    def unload_adapter(self, name: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
