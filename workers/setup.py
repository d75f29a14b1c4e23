"""Wiring for worker processes: the brokers, the actors' context, the run loop.

Settings are read once, by the command that starts the process, and passed in: the
actors are declared from them here (workers.registry.declare), on a broker per lane.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading

from dramatiq import Broker, Worker
from dramatiq.middleware import Retries

from tunelab.context import open_context
from tunelab.events.broker import build_broker
from tunelab.events.catalog import WorkerKind
from tunelab.loops import Loop
from tunelab.settings import Settings
from tunelab.workers import context
from tunelab.workers.middleware import ConsumedMetrics, DeadLetters, resend_give_ups
from tunelab.workers.registry import declare

GPU_MODULES = (
    "tunelab.workers.gpu.pings",
    "tunelab.workers.gpu.training",
    "tunelab.workers.gpu.merging",
    "tunelab.workers.gpu.serving.actors",
    "tunelab.workers.give_ups",
)
ACTOR_MODULES: dict[WorkerKind, tuple[str, ...]] = {
    "cpu": (
        "tunelab.workers.give_ups",
        "tunelab.workers.cpu.datasets",
        "tunelab.workers.cpu.webhooks",
        "tunelab.workers.cpu.pings",
        "tunelab.workers.cpu.scheduling",
        "tunelab.workers.cpu.fine_tuning",
        "tunelab.workers.cpu.batches",
        "tunelab.workers.kube.actors",
    ),
    "gpu": GPU_MODULES,
    "train": GPU_MODULES,
}

log = logging.getLogger("tunelab.worker")


def with_middleware(broker: Broker) -> Broker:
    """`broker` with tunelab's middleware."""
    # `after_*` hooks run in reverse order: placed before Retries, DeadLetters runs after
    # it, when `message.failed` is final.
    broker.add_middleware(DeadLetters(), before=Retries)
    broker.add_middleware(ConsumedMetrics())
    return broker


def declare_actors(broker: Broker, settings: Settings, kinds: tuple[WorkerKind, ...]) -> Broker:
    """`broker`, with tunelab's middleware, consuming the actors of these worker kinds
    (their modules imported now, configured by `settings`)."""
    for kind in kinds:
        import_actors(kind)
    declare(with_middleware(broker), settings, kinds)
    return broker


def import_actors(kind: WorkerKind) -> None:
    for module in ACTOR_MODULES[kind]:
        importlib.import_module(module)


def lanes(settings: Settings, kind: WorkerKind) -> list[tuple[WorkerKind, str, int]]:
    """The queues a worker process of `kind` consumes, each with its own threads and,
    since Dramatiq supports one Worker per broker, a broker of its own: a lane per
    queue keeps hours of training from holding up the GPU queue's short events."""
    if kind == "cpu":
        return [("cpu", settings.cpu_queue, settings.cpu_worker_threads)]
    return [
        ("gpu", settings.gpu_queue, settings.gpu_worker_threads),
        ("train", settings.train_queue, settings.train_worker_threads),
    ]


def run(settings: Settings, kind: WorkerKind) -> None:
    """Consume `kind`'s queues until SIGINT or SIGTERM, then finish in-flight work."""
    ctx = open_context(settings, build_broker(settings))  # publishes; consumes nothing
    context.install(ctx)
    workers = [
        Worker(
            declare_actors(build_broker(settings), settings, (lane,)),
            queues={queue},
            worker_threads=threads,
            worker_timeout=settings.worker_poll_ms,
        )
        for lane, queue, threads in lanes(settings, kind)
    ]
    resend_give_ups(ctx, kind)
    reconciler: Loop | None = None
    if kind == "gpu" and settings.backend == "local":
        from tunelab.workers.gpu.serving.keeper import Reconciler

        reconciler = Reconciler.start_current(ctx, ctx.bus.redis)
    elif kind == "cpu" and settings.backend == "kubernetes":
        from tunelab.workers.kube.reconciler import KubeReconciler

        reconciler = KubeReconciler.start_current(ctx, ctx.bus.redis)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for worker, (_, queue, threads) in zip(workers, lanes(settings, kind), strict=True):
        worker.start()
        log.info("%s worker consuming %s with %d threads", kind, queue, threads)
    stop.wait()
    log.info("%s worker stopping", kind)
    if reconciler is not None:  # model servers stop while the workers finish their work
        reconciler.stop()
    for worker in workers:
        worker.stop(timeout=20_000)
    if reconciler is not None:
        reconciler.join(timeout=60)
    ctx.db.dispose()
