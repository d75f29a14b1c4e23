"""Declaring actors: event subscribers and plain commands, as specs.

An actor module only describes its actors (`@subscriber`, `@command`); nothing binds to
a broker or reads settings when it is imported. `declare(broker, settings, kinds)` makes
the Dramatiq actors, with queue names and options from the settings the process was
started with. An event subscriber must be listed in `events.catalog.ROUTES`, so what
publishers send and what workers consume cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq import Broker

from tunelab.events.broker import queue_name
from tunelab.events.catalog import ROUTES, WorkerKind, parse_event
from tunelab.settings import Settings

OptionsFrom = Callable[[Settings], dict[str, Any]]


@dataclass(frozen=True)
class ActorSpec:
    name: str
    fn: Callable[..., None]
    worker: WorkerKind
    options: dict[str, Any] = field(default_factory=dict)
    options_from: OptionsFrom | None = None
    """Options that come from the settings (a retry count, a time limit)."""
    give_up: Callable[[Any, str], None] | None = None
    """For a subscriber: what to do with its event once its message is dead, so that
    what the message was about ends visibly failed rather than stuck."""


SPECS: dict[str, ActorSpec] = {}


def command(
    worker: WorkerKind, *, options_from: OptionsFrom | None = None, **options: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A plain actor on the worker kind's queue (it takes plain arguments)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        SPECS[fn.__name__] = ActorSpec(fn.__name__, fn, worker, options, options_from)
        return fn

    return wrap


def subscriber(
    event_type: str,
    worker: WorkerKind,
    *,
    on_give_up: Callable[[Any, str], None] | None = None,
    options_from: OptionsFrom | None = None,
    **options: Any,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """An actor that receives `event_type` events, parsed, on `worker`'s queue."""

    def wrap(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        routed = {(r.actor, r.worker) for r in ROUTES.get(event_type, ())}
        if (fn.__name__, worker) not in routed:
            raise RuntimeError(
                f"actor {fn.__name__!r} on {worker} is not routed for {event_type!r} "
                "in events.catalog.ROUTES"
            )

        def receive(message: dict[str, Any]) -> None:
            fn(parse_event(message))

        receive.__name__ = fn.__name__
        receive.__doc__ = fn.__doc__
        SPECS[fn.__name__] = ActorSpec(
            fn.__name__, receive, worker, options, options_from, on_give_up
        )
        return fn

    return wrap


def declare(broker: Broker, settings: Settings, kinds: Iterable[WorkerKind]) -> None:
    """Make the actors of these worker kinds on `broker`, configured by `settings`."""
    wanted = set(kinds)
    for spec in SPECS.values():
        if spec.worker not in wanted:
            continue
        options = {**spec.options, **(spec.options_from(settings) if spec.options_from else {})}
        dramatiq.actor(
            actor_name=spec.name,
            queue_name=queue_name(settings, spec.worker),
            broker=broker,
            **options,
        )(spec.fn)


def give_up_of(actor: str) -> Callable[[Any, str], None] | None:
    spec = SPECS.get(actor)
    return spec.give_up if spec else None
