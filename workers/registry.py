"""Declaring actors: event subscribers and plain command actors.

Actors bind to the broker installed by `workers.setup` (or a test's StubBroker); an
event subscriber must be listed in `events.catalog.ROUTES`, so what publishers send
and what workers consume cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq

from tunelab.events.broker import queue_name
from tunelab.events.catalog import ROUTES, WorkerKind, parse_event
from tunelab.events.envelope import Event
from tunelab.settings import get_settings

E = TypeVar("E", bound=Event)


def _require_broker() -> None:
    if dramatiq.broker.global_broker is None:
        raise RuntimeError("install a broker (workers.setup) before importing actor modules")


def command(
    worker: WorkerKind, **options: Any
) -> Callable[[Callable[..., None]], dramatiq.Actor[Any, Any]]:
    """A plain actor on the given worker kind's queue."""
    _require_broker()

    def wrap(fn: Callable[..., None]) -> dramatiq.Actor[Any, Any]:
        declare = dramatiq.actor(
            actor_name=fn.__name__, queue_name=queue_name(get_settings(), worker), **options
        )
        return declare(fn)

    return wrap


GIVE_UP: dict[str, Callable[[Any, str], None]] = {}
"""Per actor: what to do with an event whose message failed all its retries."""


def subscriber(
    event_type: str,
    worker: WorkerKind,
    on_give_up: Callable[[Any, str], None] | None = None,
    **options: Any,
) -> Callable[[Callable[[Any], None]], dramatiq.Actor[Any, Any]]:
    """An actor that receives `event_type` events, parsed, on `worker`'s queue.

    `on_give_up(event, error)` runs once the message is dead, so that the work it was
    about ends visibly failed rather than stuck.
    """

    def wrap(fn: Callable[[Any], None]) -> dramatiq.Actor[Any, Any]:
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
        if on_give_up is not None:
            GIVE_UP[fn.__name__] = on_give_up
        return command(worker, **options)(receive)

    return wrap
