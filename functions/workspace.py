"""What a client needs to know to fill in forms: whose token it holds, the clusters it
may use, and the choices a dataset offers. The web console reads these; so can scripts."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tunelab.clusters import clusters
from tunelab.dataset_rules import SIZE_CATEGORIES
from tunelab.functions.http import respond
from tunelab.workers.cpu.plugins import available as available_plugins


async def whoami(request: Request) -> JSONResponse:
    return respond({"name": request.scope["workspace"].name})


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
