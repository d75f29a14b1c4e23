"""Settings: typed, prefixed, and loud about what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TUNELAB_DATABASE_URL", raising=False)
    settings = load_settings()
    assert settings.store == "local"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'tunelab.db'}"
    assert settings.cpu_queue != settings.gpu_queue


def test_a_malformed_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_API_PORT", "eighty")
    with pytest.raises(SettingsError, match="TUNELAB_API_PORT"):
        load_settings()


def test_an_unknown_store_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_STORE", "ftp")
    with pytest.raises(SettingsError, match="TUNELAB_STORE"):
        load_settings()


def test_the_cli_exits_with_the_bad_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.cli import main

    monkeypatch.setenv("TUNELAB_WORKER_POLL_MS", "0")
    with pytest.raises(SystemExit, match="TUNELAB_WORKER_POLL_MS"):
        main(["migrate"])


def test_a_worker_without_a_broker_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.cli import main

    monkeypatch.delenv("TUNELAB_REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="TUNELAB_REDIS_URL"):
        main(["worker", "cpu"])
