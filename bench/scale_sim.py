"""Scale simulation: many no-op trainings through tunelab's real queues and database.

Run by hand against a running platform (`tunelab up` in another terminal):

    .venv/bin/python bench/scale_sim.py [--tasks 10,50,200] [--seconds 20]

Like bench/events.py it reads the API address, token and Redis URL from the data
directory that `tunelab up` writes (override with --api, --token, --redis-url); the
database is the platform's (TUNELAB_DATABASE_URL, else its SQLite file).

What is real: the Redis broker (Dramatiq's RedisBroker, built by `build_broker`), the
`EventBus` (each event one INSERT into `events`, then one enqueue per route in
`events/catalog.py`), the Dramatiq `Worker` consuming them (same threads and 10 ms
poll as `tunelab worker`), the progress write of a training (the task row's UPDATE, as
`tunelab/training/reporting.py` does, then a `task.progress` event) and the web console's event
stream (`GET /api/v1/events/stream`, through the API). What is not: training. Sim
workers (1 "cpu" and --gpu-procs "gpu" processes started here) consume the same routes
on queues of their own (`scale-sim-*`) so that the platform's own workers do not train:

- `task.scheduled` -> `train_task`: marks the task running, then every 1/--progress-hz s
  updates its row and publishes `task.progress` (as the training reporter does, 2/s), and after its
  length publishes `task.succeeded` -> `finish_on_succeeded` (cpu), which marks it done.
  --tasks N slots each run one task after another, so N train at once.

Chats are not events any more (the API sends them straight to the model servers), so
they are not simulated here: bench/chat.py measures them.

Meanwhile --probe-rate real pings go through the API to the platform's own CPU and GPU
workers (their pongs' latency, beside an idle baseline measured first) and --consoles
event streams are held open on the API. For each scenario it prints events/s offered
and recorded, DB writes/s, Redis commands/s, queue depth, and p50/p99 latencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import sessionmaker

from tunelab.db import Database
from tunelab.db.tables import EventRecord, Experiment, Task, Workspace
from tunelab.events.broker import build_broker
from tunelab.events.bus import EventBus
from tunelab.events.experiment import (
    TaskProgress,
    TaskProgressData,
    TaskScheduled,
    TaskScheduledData,
    TaskSucceeded,
    TaskSucceededData,
)
from tunelab.settings import get_settings, load_settings

PREFIX = "scale-sim"
SIM_QUEUES = {w: f"{PREFIX}-{w}" for w in ("cpu", "gpu", "train")}
FOUNDATION = {"drain": 1658.0, "p50": 8.2, "p99": 28.6, "intake": 88.0}
"""README's Benchmarks, 2026-11-28, 2-core machine, SQLite: no-op events/s drained by two
CPU worker processes; HTTP -> CPU actor latency p50/p99 in ms; pings accepted/s over HTTP."""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def sim_queue(worker: str) -> str:
    return SIM_QUEUES[worker]


def age_ms(moment: datetime) -> float:
    return (time.time() - moment.timestamp()) * 1000


# --- sim workers (child processes) -------------------------------------------------


class Recorder:
    """Measurements of one process, sent to the driver in batches: (kind, wall time, value)."""

    def __init__(self, out: Any) -> None:
        self.out, self.lock = out, threading.Lock()
        self.items: list[tuple[str, float, float]] = []
        threading.Thread(target=self._flush_forever, daemon=True).start()

    def add(self, kind: str, value: float) -> None:
        with self.lock:
            self.items.append((kind, time.time(), value))

    def flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        if items:
            self.out.put(items)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(0.5)
            self.flush()


class WidePool(Database):
    """A Database with a PostgreSQL connection for each thread of this process.

    One sim process stands for many trainings; on Kubernetes each is a pod of its own
    with its own connections, so it must not queue on the 10 (+10 overflow) of one
    `Database`, which a real GPU worker's 2 training threads never exhaust.
    """

    def __init__(self, url: str, size: int) -> None:
        super().__init__(url)
        if not url.startswith("sqlite"):
            self.engine.dispose()
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=size, max_overflow=0)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)


def sim_worker(role: str, opts: dict[str, Any], out: Any, stop: Any) -> None:
    """One sim worker process: "cpu" (task outcomes) or "gpu" (no-op training)."""
    import dramatiq
    from dramatiq import Worker

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    threads = opts["train_threads"] if role == "gpu" else settings.cpu_worker_threads
    db = WidePool(opts["database_url"], threads)
    bus = EventBus(broker, db, sim_queue, "local")
    rec = Recorder(out)
    hz = opts["progress_hz"]

    def set_task(task_id: str, **fields: Any) -> None:
        # What reporting.Run._set does for every progress publish.
        with db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is not None:
                for name, value in fields.items():
                    setattr(task, name, value)

    @dramatiq.actor(
        actor_name="train_task", queue_name=SIM_QUEUES["train"], max_retries=0, time_limit=3_600_000
    )
    def train_task(message: dict[str, Any]) -> None:
        event = TaskScheduled.model_validate(message)
        rec.add("queue_train", age_ms(event.time))
        with db.session() as session:
            task = session.get(Task, event.data.task_id)
            length = float(task.spec["sim_seconds"]) if task else 0.0
            if task is not None:
                task.status, task.started_at = "running", datetime.now(UTC)
        ref = {k: getattr(event.data, k) for k in ("experiment_id", "experiment", "task_id")}
        ref["task"] = event.data.task
        start, steps = time.monotonic(), max(1, int(length * hz))
        for step in range(1, steps + 1):
            due = start + step / hz
            time.sleep(max(0.0, due - time.monotonic()))
            rec.add("progress_lag", (time.monotonic() - due) * 1000)
            began = time.perf_counter()
            progress = {"step": step, "total_steps": steps, "epoch": step / steps}
            metrics = {"loss": 2.0 / step, "learning_rate": 1e-4, "tokens_per_second": 1000.0}
            set_task(event.data.task_id, progress=progress, metrics=metrics)
            bus.publish(
                TaskProgress(
                    workspace=event.workspace,
                    subject=event.subject,
                    data=TaskProgressData(**ref, **progress, **metrics),
                )
            )
            rec.add("progress_write", (time.perf_counter() - began) * 1000)
        bus.publish(
            TaskSucceeded.following(
                event,
                data=TaskSucceededData(**ref, model=f"sim-{ref['task']}", score={}, base_score={}),
            )
        )

    @dramatiq.actor(actor_name="finish_on_succeeded", queue_name=SIM_QUEUES["cpu"], max_retries=0)
    def finish_on_succeeded(message: dict[str, Any]) -> None:
        event = TaskSucceeded.model_validate(message)
        rec.add("queue_cpu", age_ms(event.time))
        set_task(event.data.task_id, status="succeeded", finished_at=datetime.now(UTC))

    poll = settings.worker_poll_ms
    if role == "cpu":
        lanes = [(SIM_QUEUES["cpu"], settings.cpu_worker_threads)]
    else:
        lanes = [(SIM_QUEUES["train"], opts["train_threads"])]
    workers = [Worker(broker, queues={q}, worker_threads=n, worker_timeout=poll) for q, n in lanes]
    for worker in workers:
        worker.start()
    out.put([("ready", time.time(), 0.0)])
    stop.wait()
    for worker in workers:
        worker.stop(timeout=10_000)
    rec.flush()


# --- the driver ----------------------------------------------------------------------


@dataclass
class Scenario:
    tasks: int
    seconds: float
    start: float = 0.0
    end: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"N={self.tasks}" if self.tasks else "idle"


class Driver:
    def __init__(self, args: argparse.Namespace, database_url: str) -> None:
        self.args = args
        self.db = Database(database_url)
        settings = load_settings()  # with TUNELAB_REDIS_URL set by main()
        self.settings = settings
        self.broker = build_broker(settings)
        self.bus = EventBus(self.broker, self.db, sim_queue, "local")
        self.redis = redis.Redis.from_url(args.redis_url, max_connections=256)
        self.records: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        with self.db.session() as session:
            workspace = session.scalar(select(Workspace).where(Workspace.name == "default"))
            if workspace is None:
                raise SystemExit("no `default` workspace: is this tunelab's database?")
            self.workspace = workspace.id
            experiment = Experiment(
                workspace_id=self.workspace, name=f"scale-sim-{uuid.uuid4().hex[:8]}", spec={}
            )
            session.add(experiment)
            session.flush()
            self.experiment = (experiment.id, experiment.name)
        self.postgres = database_url.startswith("postgresql")

    def note(self, kind: str, value: float) -> None:
        with self.lock:
            self.records.append((kind, time.time(), value))

    # Background load that runs for the whole session: probes, consoles, depth samples.
    def probe(self) -> None:
        """Real pings through the API to the platform's own CPU and GPU workers."""
        headers = {"authorization": f"Bearer {self.args.token}"}
        with httpx.Client(base_url=self.args.api, headers=headers, timeout=30) as client:
            while not self.closing.is_set():
                began = time.perf_counter()
                reply = client.post("/api/v1/system/ping")
                reply.raise_for_status()
                self.note("ping:" + reply.json()["event_id"], 0.0)
                self.note("http_ping", (time.perf_counter() - began) * 1000)
                self.closing.wait(1 / self.args.probe_rate)

    def console(self) -> None:
        """One open web console: the API's event stream, timed for `task.progress`."""
        headers = {"authorization": f"Bearer {self.args.token}"}
        url = f"{self.args.api}/api/v1/events/stream"
        timeout = httpx.Timeout(30, read=None)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", url, headers=headers) as reply,
        ):
            for line in reply.iter_lines():
                if self.closing.is_set():
                    return
                if line.startswith("data:") and '"task.progress"' in line:
                    sent = datetime.fromisoformat(json.loads(line[5:])["time"])
                    self.note("console", age_ms(sent))

    def sample_depth(self) -> None:
        names = [*SIM_QUEUES.values(), self.settings.cpu_queue, self.settings.gpu_queue]
        while not self.closing.is_set():
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.llen(f"dramatiq:{name}")
            self.note("depth", float(sum(pipe.execute())))
            self.closing.wait(0.25)

    # One scenario.
    def plan(self, sc: Scenario) -> list[tuple[float, float]]:
        """(start offset, length) of each task: --tasks slots, each running one task after
        another, the first ones staggered so that starts and ends spread out."""
        runs = []
        length = self.args.task_seconds
        for slot in range(sc.tasks):
            at, first = 0.0, length * (slot + 1) / sc.tasks
            span = first
            while at < sc.seconds - 1 / self.args.progress_hz:
                span = min(span, sc.seconds - at)
                runs.append((at, span))
                at, span = at + span, length
        return runs

    def run(self, sc: Scenario) -> None:
        runs = self.plan(sc)
        with self.db.session() as session:
            tasks = [
                Task(
                    workspace_id=self.workspace,
                    experiment_id=self.experiment[0],
                    name=f"t{uuid.uuid4().hex[:12]}",
                    cluster="local",
                    spec={"sim_seconds": span},
                    status="scheduled",
                )
                for _, span in runs
            ]
            session.add_all(tasks)
            session.flush()
            starts = sorted(((at, t.id, t.name) for (at, _), t in zip(runs, tasks, strict=True)))
            seq0 = session.scalar(select(func.max(EventRecord.seq))) or 0
        xact0 = self._xacts()
        cmds0 = int(self.redis.info("stats")["total_commands_processed"])
        sc.start = time.time()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=128) as pool:
            i = 0
            while (now := time.monotonic() - t0) < sc.seconds:
                while i < len(starts) and starts[i][0] <= now:
                    _, task_id, name = starts[i]
                    data = TaskScheduledData(
                        experiment_id=self.experiment[0],
                        experiment=self.experiment[1],
                        task_id=task_id,
                        task=name,
                        cluster="local",
                    )
                    pool.submit(
                        self.bus.publish,
                        TaskScheduled(
                            workspace=self.workspace,
                            subject=f"experiments/{self.experiment[1]}",
                            data=data,
                        ),
                    )
                    i += 1
                time.sleep(0.005)
            sc.end = time.time()
            with self.db.session() as session:
                seq1 = session.scalar(select(func.max(EventRecord.seq))) or 0
            xact1 = self._xacts()
            cmds1 = int(self.redis.info("stats")["total_commands_processed"])
            # Drain: what was started finishes, the queues empty.
            drain_from = time.monotonic()
            while time.monotonic() - drain_from < 60:
                with self.db.session() as session:
                    busy = session.scalar(
                        select(func.count())
                        .select_from(Task)
                        .where(
                            Task.experiment_id == self.experiment[0],
                            Task.status.in_(("scheduled", "running")),
                            Task.id.in_([t for _, t, _ in starts[:i]]),
                        )
                    )
                if not busy and not self._sim_depth():
                    break
                time.sleep(0.2)
            drain = time.monotonic() - drain_from
        seconds = sc.end - sc.start
        progress = sum(max(1, int(span * self.args.progress_hz)) for _, span in runs)
        probes = 3 * self.args.probe_rate * seconds  # a ping, a pong from each worker kind
        offered = (progress + 2 * i + probes) / seconds  # task.scheduled, task.succeeded
        sc.figures.update(
            offered=offered,
            recorded=(seq1 - seq0) / seconds,
            redis_cmds=(cmds1 - cmds0) / seconds,
            drain=drain,
            tasks_started=i,
        )
        if xact0 is not None and xact1 is not None:
            sc.figures["pg_xacts"] = (xact1 - xact0) / seconds
            sc.figures["pg_connections"] = self._pg_connections()

    def _xacts(self) -> int | None:
        if not self.postgres:
            return None
        with self.db.engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT xact_commit FROM pg_stat_database"
                        " WHERE datname = current_database()"
                    )
                ).scalar_one()
            )

    def redis_rate(self, seconds: float) -> tuple[float, float]:
        """Commands/s and Lua script calls/s (Dramatiq's fetches and acks) Redis runs."""

        def read() -> tuple[int, int]:
            commands = int(self.redis.info("stats")["total_commands_processed"])
            stats = self.redis.info("commandstats")
            scripts = [stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha")]
            return commands, int(sum(scripts))

        before = read()
        time.sleep(seconds)
        after = read()
        return (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds

    def _pg_connections(self) -> float:
        with self.db.engine.connect() as connection:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            return float(connection.execute(text(query)).scalar_one())

    def _sim_depth(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in SIM_QUEUES.values():
            pipe.llen(f"dramatiq:{name}")
        return int(sum(pipe.execute()))

    def pong_latencies(self, after: float) -> dict[str, tuple[float, str, float]]:
        """ping id -> (when sent, worker, latency ms) of the platform's pongs."""
        pings = {kind[5:]: t for kind, t, _ in self.records if kind.startswith("ping:")}
        found: dict[str, tuple[float, str, float]] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.db.session() as session:
                rows = session.scalars(
                    select(EventRecord.data).where(
                        EventRecord.type == "system.pong",
                        EventRecord.time >= datetime.fromtimestamp(after, UTC),
                    )
                ).all()
            for data in rows:
                if data["ping_id"] in pings:
                    found[f"{data['ping_id']}/{data['worker']}"] = (
                        pings[data["ping_id"]],
                        data["worker"],
                        data["latency_ms"],
                    )
            if len(found) >= 2 * len(pings):
                break
            time.sleep(0.5)
        return found


def assign(scenarios: list[Scenario], records: list[tuple[str, float, float]]) -> None:
    for kind, at, value in records:
        for sc in scenarios:
            if sc.start <= at < sc.end:
                sc.samples[kind].append(value)
                break


def report(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    base = scenarios[0]

    def stat(sc: Scenario, kind: str, q: float) -> float:
        return percentile(sc.samples.get(kind, []), q)

    rows: list[tuple[str, Any]] = [
        ("events/s offered", lambda sc: sc.figures.get("offered", 0.0)),
        ("events/s recorded (rows)", lambda sc: sc.figures.get("recorded", 0.0)),
        (
            "DB writes/s (rows+updates)",
            lambda sc: (
                sc.figures.get("recorded", 0.0)
                + (
                    len(sc.samples.get("progress_write", []))
                    + sc.figures.get("tasks_started", 0) * 2
                )
                / max(1e-9, sc.end - sc.start)
            ),
        ),
        ("PG commits/s", lambda sc: sc.figures.get("pg_xacts", math.nan)),
        ("PG connections open", lambda sc: sc.figures.get("pg_connections", math.nan)),
        ("Redis commands/s", lambda sc: sc.figures.get("redis_cmds", 0.0)),
        ("queue depth max", lambda sc: max(sc.samples.get("depth", [0.0]))),
        ("queue depth growth /s", lambda sc: _growth(sc)),
        ("drain after window s", lambda sc: sc.figures.get("drain", 0.0)),
        ("progress write p50 ms", lambda sc: stat(sc, "progress_write", 50)),
        ("progress write p99 ms", lambda sc: stat(sc, "progress_write", 99)),
        ("progress late p99 ms", lambda sc: stat(sc, "progress_lag", 99)),
        ("progress->console p50 ms", lambda sc: stat(sc, "console", 50)),
        ("progress->console p99 ms", lambda sc: stat(sc, "console", 99)),
        ("scheduled->train p50 ms", lambda sc: stat(sc, "queue_train", 50)),
        ("scheduled->train p99 ms", lambda sc: stat(sc, "queue_train", 99)),
        ("succeeded->cpu p99 ms", lambda sc: stat(sc, "queue_cpu", 99)),
        ("real ping->CPU actor p50 ms", lambda sc: stat(sc, "pong_cpu", 50)),
        ("real ping->CPU actor p99 ms", lambda sc: stat(sc, "pong_cpu", 99)),
        ("real ping->GPU actor p99 ms", lambda sc: stat(sc, "pong_gpu", 99)),
        ("HTTP ping accept p99 ms", lambda sc: stat(sc, "http_ping", 99)),
    ]
    width = 14
    print(f"\n{'measure':32}" + "".join(f"{sc.label:>{width}}" for sc in scenarios))
    for name, fn in rows:
        cells = []
        for sc in scenarios:
            value = fn(sc)
            cells.append(f"{'-':>{width}}" if math.isnan(value) else f"{value:{width}.1f}")
        print(f"{name:32}" + "".join(cells))
    print("\nratios (the busiest scenario beside the idle baseline and README's Foundation run):")
    top = scenarios[-1]
    recorded = top.figures.get("recorded", 0.0)
    print(
        f"  events/s recorded {recorded:.0f} = {recorded / FOUNDATION['drain']:.2f}x the "
        f"{FOUNDATION['drain']:.0f}/s no-op drain of two CPU worker processes"
    )
    offered = top.figures.get("offered", 0.0)
    if offered:
        print(f"  recorded / offered = {recorded / offered:.2f} (1.00: kept up)")
    for worker in ("cpu", "gpu"):
        for q in (50, 99):
            idle, busy = stat(base, f"pong_{worker}", q), stat(top, f"pong_{worker}", q)
            if not math.isnan(idle) and not math.isnan(busy):
                extra = f", README idle {FOUNDATION['p' + str(q)]} ms" if worker == "cpu" else ""
                print(
                    f"  real ping->{worker} p{q}: {busy:.1f} ms vs idle {idle:.1f} ms "
                    f"({busy / max(idle, 1e-9):.1f}x{extra})"
                )
    print(
        f"\n{args.seconds:g} s per scenario, tasks {args.task_seconds:g} s long, "
        f"{args.progress_hz:g} progress/s each; {args.consoles} consoles; "
        f"{args.probe_rate:g} real pings/s"
    )


def _growth(sc: Scenario) -> float:
    depth = sc.samples.get("depth", [])
    if len(depth) < 4:
        return 0.0
    quarter = max(1, len(depth) // 4)
    head, tail = depth[:quarter], depth[-quarter:]
    return (sum(tail) / len(tail) - sum(head) / len(head)) / (0.75 * (sc.end - sc.start))


def main() -> None:
    settings = get_settings()
    data = settings.data_dir
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", default=f"http://{settings.api_host}:{settings.api_port}")
    parser.add_argument("--token", default=_read(data / "default-token"))
    parser.add_argument("--redis-url", default=settings.redis_url or _read(data / "redis.url"))
    parser.add_argument("--database-url", default=settings.effective_database_url)
    parser.add_argument("--tasks", default="10,50,200", help="concurrent trainings per scenario")
    parser.add_argument("--seconds", type=float, default=20, help="length of each scenario")
    parser.add_argument("--baseline-seconds", type=float, default=6)
    parser.add_argument("--task-seconds", type=float, default=10, help="length of a training")
    parser.add_argument("--progress-hz", type=float, default=2.0)
    parser.add_argument("--gpu-procs", type=int, default=2, help="sim GPU worker processes")
    parser.add_argument("--consoles", type=int, default=2, help="event streams held open")
    parser.add_argument("--probe-rate", type=float, default=2.0, help="real pings/s via the API")
    args = parser.parse_args()
    if not args.token or not args.redis_url:
        raise SystemExit("no token or Redis URL: start `tunelab up` or pass --token/--redis-url")
    os.environ["TUNELAB_REDIS_URL"] = args.redis_url  # for the sim workers' settings
    tasks = [int(n) for n in args.tasks.split(",")]

    driver = Driver(args, args.database_url)
    for name in SIM_QUEUES.values():
        driver.redis.delete(f"dramatiq:{name}", f"dramatiq:{name}.msgs", f"dramatiq:{name}.DQ")
    # What idle workers cost Redis: each queue a worker consumes is polled every
    # TUNELAB_WORKER_POLL_MS (and its delay queue too), whether or not work waits.
    idle_platform = driver.redis_rate(3.0)
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    opts = {
        "database_url": args.database_url,
        "progress_hz": args.progress_hz,
        "train_threads": math.ceil(max(tasks) / args.gpu_procs) + 4,
    }
    roles = ["cpu"] + ["gpu"] * args.gpu_procs
    procs = [ctx.Process(target=sim_worker, args=(r, opts, out, stop), daemon=True) for r in roles]
    for proc in procs:
        proc.start()
    collected: list[tuple[str, float, float]] = []
    ready, collecting = threading.Semaphore(0), threading.Event()

    def collect() -> None:
        # Read all along: a child blocked on a full pipe would lose what it measured.
        while True:
            try:
                batch = out.get(timeout=0.5)
            except queue_mod.Empty:
                if collecting.is_set():
                    return
                continue
            for _ in range(sum(kind == "ready" for kind, _, _ in batch)):
                ready.release()
            collected.extend(batch)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise SystemExit("a sim worker did not start")
    idle_sim = driver.redis_rate(3.0)
    sim_lanes = 1 + args.gpu_procs  # cpu, and train in each sim GPU process
    print(
        f"Redis with nothing to do: {idle_platform[0]:.0f} commands/s, {idle_platform[1]:.0f}"
        f" fetch scripts/s (the platform's workers); {idle_sim[0]:.0f} and {idle_sim[1]:.0f}"
        f" with the sim's {sim_lanes} queues too: per consumed queue "
        f"{(idle_sim[0] - idle_platform[0]) / sim_lanes:.0f} commands/s, "
        f"{(idle_sim[1] - idle_platform[1]) / sim_lanes:.0f} scripts/s "
        f"(TUNELAB_WORKER_POLL_MS={driver.settings.worker_poll_ms})",
        flush=True,
    )
    threads = [threading.Thread(target=driver.probe, daemon=True)]
    threads += [threading.Thread(target=driver.console, daemon=True) for _ in range(args.consoles)]
    threads.append(threading.Thread(target=driver.sample_depth, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # consoles connected
    began = time.time()
    scenarios = [Scenario(0, args.baseline_seconds)]
    scenarios += [Scenario(n, args.seconds) for n in tasks]
    try:
        for sc in scenarios:
            print(f"{sc.label}: {sc.seconds:g} s ...", flush=True)
            driver.run(sc)
            print(f"  drained in {sc.figures['drain']:.1f} s", flush=True)
    finally:
        driver.closing.set()
        stop.set()
        for proc in procs:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.terminate()
    collecting.set()
    collector.join()
    with driver.lock:
        collected.extend(driver.records)
    for at, worker, latency in driver.pong_latencies(began).values():
        collected.append((f"pong_{worker}", at, latency))
    assign(scenarios, collected)
    report(scenarios, args)
    with driver.db.session() as session:  # leave no sim task looking alive
        session.execute(
            update(Task)
            .where(Task.experiment_id == driver.experiment[0], Task.status != "succeeded")
            .values(status="cancelled")
        )


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


if __name__ == "__main__":
    main()
