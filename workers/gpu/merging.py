"""The merging actor: `model.merge_requested` in, the merged model made and
`model.registered` out (the work is tunelab.training.merging's)."""

from __future__ import annotations

from tunelab.events.model import ModelMergeRequested
from tunelab.training.merging import fail, merge
from tunelab.workers.context import current
from tunelab.workers.registry import subscriber


def give_up(event: ModelMergeRequested, error: str) -> None:
    """After the last retry the model fails visibly instead of staying `merging`."""
    fail(current(), event, error)


@subscriber(
    "model.merge_requested",
    "train",
    on_give_up=give_up,
    max_retries=2,
    min_backoff=5_000,
    time_limit=3_600_000,  # loading and saving a 7B model takes minutes
)
def merge_model(event: ModelMergeRequested) -> None:
    ctx = current()
    registered = merge(ctx, event)
    if registered is not None:
        ctx.bus.publish(registered)
