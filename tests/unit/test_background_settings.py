"""Settings of the background Prefect API: its mode, idle time, and that it counts as embedded."""

from __future__ import annotations

from pathlib import Path

import pytest

from pynomaly.errors import InputError
from pynomaly.settings import EMBEDDED_PREFECT_URL_ENV, Settings, get_settings


def test_the_background_api_is_embedded_and_its_database_is_backed_up(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:41234/api")
    monkeypatch.setenv(EMBEDDED_PREFECT_URL_ENV, "http://127.0.0.1:41234/api")
    settings = Settings()
    assert settings.prefect_server is False
    assert (
        settings.prefect_database_url == f"sqlite:///{platform_home.resolve()}/prefect/prefect.db"
    )


def test_a_user_set_prefect_api_url_is_a_server(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    monkeypatch.setenv(EMBEDDED_PREFECT_URL_ENV, "http://127.0.0.1:41234/api")
    settings = Settings()
    assert settings.prefect_server is True
    assert settings.prefect_database_url is None


def test_defaults_and_bad_values_name_their_variable(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYNOMALY_PREFECT_MODE", raising=False)
    assert (Settings().prefect_mode, Settings().prefect_idle_minutes) == ("background", 30.0)
    monkeypatch.setenv("PYNOMALY_PREFECT_MODE", "forever")
    with pytest.raises(InputError, match="PYNOMALY_PREFECT_MODE='forever'"):
        get_settings()
    get_settings.cache_clear()
    monkeypatch.setenv("PYNOMALY_PREFECT_MODE", "ephemeral")
    monkeypatch.setenv("PYNOMALY_PREFECT_IDLE_MINUTES", "0")
    with pytest.raises(InputError, match="PYNOMALY_PREFECT_IDLE_MINUTES='0'"):
        get_settings()
