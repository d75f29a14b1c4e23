"""Where the CLI finds the platform: a profile (URL and token) stored by `tunelab login`
in a file only its owner can read, or TUNELAB_URL and TUNELAB_TOKEN."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Profile:
    url: str
    token: str


def profiles_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tunelab" / "profiles.json"


def _read() -> dict[str, Any]:
    path = profiles_file()
    if not path.exists():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return loaded


def save(name: str, profile: Profile) -> Path:
    """Store the profile (0600: the token is a secret); returns the file."""
    path = profiles_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    profiles = {**_read(), name: {"url": profile.url, "token": profile.token}}
    # Created 0600 before anything is written to it, so the token is never readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(profiles, out, indent=2)
    return path


def load(name: str) -> Profile:
    """The named profile; TUNELAB_URL and TUNELAB_TOKEN win over it (a URL from the
    environment takes its token from there too). Raises LookupError saying how to log
    in."""
    stored = _read().get(name) or {}
    url, token = stored.get("url"), stored.get("token")
    if os.environ.get("TUNELAB_URL"):
        # The pair from the environment, never a stored token sent to another URL.
        url, token = os.environ["TUNELAB_URL"], os.environ.get("TUNELAB_TOKEN")
    elif os.environ.get("TUNELAB_TOKEN"):
        token = os.environ["TUNELAB_TOKEN"]
    if not url or not token:
        raise LookupError(
            f"no profile {name!r}: run `tunelab login --url URL --token TOKEN"
            f"{'' if name == 'default' else f' --profile {name}'}` "
            "(or set TUNELAB_URL and TUNELAB_TOKEN)"
        )
    return Profile(url, token)
