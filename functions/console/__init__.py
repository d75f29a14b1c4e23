"""The web console: a single page, written against the public API only, served with its
vendored assets from this package (no CDN, nothing fetched at run time)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# User content is only ever put on the page as text; this policy is the second line of
# defence: no script that is not one of ours runs, whatever a dataset cell holds.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


def home(request: Request) -> Response:
    return RedirectResponse("/console/")


class ConsoleAssets(StaticFiles):
    """Static files with the console's security headers; revalidated on each load so an
    upgraded platform never runs yesterday's scripts against today's API."""

    def file_response(self, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


ROUTES = [
    Route("/", home),
    Route("/console", home),
    Route("/console/", index),
    Mount("/console/assets", ConsoleAssets(directory=STATIC), name="console-assets"),
]
