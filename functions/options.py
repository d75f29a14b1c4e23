"""What a client needs to fill in forms: the clusters it may use, the choices a
dataset offers, and the evaluation methods. The web console reads these; so can scripts."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.clusters import clusters
from tunelab.dataset_rules import SIZE_CATEGORIES
from tunelab.functions.http import respond
from tunelab.plugins import available as available_plugins
from tunelab.scoring import METHODS


def list_clusters(request: Request) -> JSONResponse:
    """Each cluster with its namespaces and inventory; GPU type `cpu` means no GPU."""
    return respond(
        {
            "items": [
                {
                    "name": c.name,
                    "namespaces": list(c.namespaces),
                    "cpu": str(c.cpu),
                    "memory": str(c.memory),
                    "gpus": c.gpus,
                }
                for c in clusters(request.app.state.settings).values()
            ]
        }
    )


def dataset_options(request: Request) -> JSONResponse:
    plugins = available_plugins()
    return respond(
        {
            "plugins": [
                {"name": name, "description": (entry.load().__doc__ or "").strip()}
                for name, entry in sorted(plugins.items())
            ],
            "size_categories": list(SIZE_CATEGORIES),
            "languages": ["zh", "en"],
        }
    )


def list_evaluations(request: Request) -> JSONResponse:
    return respond(
        {
            "items": [
                {
                    "name": m.name,
                    "description": m.description,
                    "higher_is_better": m.higher_is_better,
                }
                for m in METHODS.values()
            ]
        }
    )
