"""Wiring for worker processes: the broker, the actors' context, the run loop.

Import order matters with Dramatiq: the broker is installed here before any actor
module is imported, because actors bind to the global broker when they are declared.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from typing import TYPE_CHECKING

import dramatiq
from dramatiq import Broker, Worker
from dramatiq.middleware import Retries

from tunelab.db import Database
from tunelab.events.broker import build_broker, queue_name
from tunelab.events.bus import EventBus
from tunelab.events.catalog import WorkerKind
from tunelab.settings import Settings
from tunelab.store import open_store
from tunelab.workers import context
from tunelab.workers.middleware import ConsumedMetrics, DeadLetters

if TYPE_CHECKING:
    from tunelab.workers.gpu.serving.keeper import Reconciler
    from tunelab.workers.kube.reconciler import KubeReconciler

ACTOR_MODULES: dict[WorkerKind, tuple[str, ...]] = {
    "cpu": (
        "tunelab.workers.cpu.datasets",
        "tunelab.workers.cpu.webhooks",
        "tunelab.workers.cpu.system",
        "tunelab.workers.cpu.scheduling",
        "tunelab.workers.cpu.batches",
        "tunelab.workers.kube.actors",
    ),
    "gpu": (
        "tunelab.workers.gpu.system",
        "tunelab.workers.gpu.training",
        "tunelab.workers.gpu.serving.actors",
    ),
}

log = logging.getLogger("tunelab.worker")


def with_middleware(broker: Broker) -> Broker:
    """`broker` with tunelab's middleware."""
    # `after_*` hooks run in reverse order: placed before Retries, DeadLetters runs after
    # it, when `message.failed` is final.
    broker.add_middleware(DeadLetters(), before=Retries)
    broker.add_middleware(ConsumedMetrics())
    return broker


def install_broker(broker: Broker) -> Broker:
    """Make `broker`, with tunelab's middleware, the one actors bind to."""
    dramatiq.set_broker(with_middleware(broker))
    return broker


def lane_broker(settings: Settings, actors: Broker, queue: str) -> Broker:
    """A broker of its own for the Dramatiq Worker of one queue, holding that queue's
    actors. Dramatiq supports one Worker per broker (each adds its own middleware to
    it); a lane per queue keeps hours of training from holding up the GPU queue."""
    broker = with_middleware(build_broker(settings))
    for actor in actors.actors.values():
        if actor.queue_name == queue:
            broker.declare_actor(actor)
    return broker


def make_context(settings: Settings, broker: Broker) -> context.WorkerContext:
    db = Database(settings.effective_database_url)
    bus = EventBus(broker, db, lambda worker: queue_name(settings, worker), settings.backend)
    return context.WorkerContext(settings=settings, db=db, store=open_store(settings), bus=bus)


def import_actors(kind: WorkerKind, settings: Settings | None = None) -> None:
    for module in ACTOR_MODULES[kind]:
        importlib.import_module(module)


def lanes(settings: Settings, kind: WorkerKind) -> list[tuple[str, int]]:
    """The queues a worker process of `kind` consumes, each with its own threads."""
    if kind == "cpu":
        return [(settings.cpu_queue, settings.cpu_worker_threads)]
    return [
        (settings.gpu_queue, settings.gpu_worker_threads),
        (settings.train_queue, settings.train_worker_threads),
    ]


def run(settings: Settings, kind: WorkerKind) -> None:
    """Consume `kind`'s queues until SIGINT or SIGTERM, then finish in-flight work."""
    broker = install_broker(build_broker(settings))
    ctx = make_context(settings, broker)
    context.install(ctx)
    import_actors(kind, settings)
    workers = [
        Worker(
            lane_broker(settings, broker, queue),
            queues={queue},
            worker_threads=threads,
            worker_timeout=settings.worker_poll_ms,
        )
        for queue, threads in lanes(settings, kind)
    ]
    reconciler: Reconciler | KubeReconciler | None = None
    if kind == "gpu" and settings.backend == "local":
        from tunelab.workers.gpu.serving.keeper import start_reconciler

        reconciler = start_reconciler(ctx, ctx.bus.redis)
    elif kind == "cpu" and settings.backend == "kubernetes":
        from tunelab.workers.kube.reconciler import start_kube_reconciler

        reconciler = start_kube_reconciler(ctx, ctx.bus.redis)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for worker, (queue, threads) in zip(workers, lanes(settings, kind), strict=True):
        worker.start()
        log.info("%s worker consuming %s with %d threads", kind, queue, threads)
    stop.wait()
    log.info("%s worker stopping", kind)
    if reconciler is not None:  # model servers stop while the workers finish their work
        reconciler.stopping.set()
        reconciler.poke()
    for worker in workers:
        worker.stop(timeout=20_000)
    if reconciler is not None:
        reconciler.join(timeout=60)
    ctx.db.dispose()
