"""Settings fail fast on unsafe combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import DEFAULT_SECRET, Environment, Settings


def test_settings_when_production_with_default_secret_refuse() -> None:
    with pytest.raises(ValidationError, match="CLINAIOPS_SECRET_KEY"):
        Settings(environment=Environment.PRODUCTION, secret_key=DEFAULT_SECRET)


@pytest.mark.parametrize("env", [Environment.DEV, Environment.DEMO, Environment.TEST])
def test_settings_when_dev_like_with_default_secret_load(env: Environment) -> None:
    assert Settings(environment=env).secret_key == DEFAULT_SECRET


def test_settings_when_secret_short_refuse() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(environment=Environment.PRODUCTION, secret_key="short")


def test_settings_when_production_without_secure_cookies_refuse() -> None:
    with pytest.raises(ValidationError, match="COOKIE_SECURE"):
        Settings(environment=Environment.PRODUCTION, secret_key="s" * 40, cookie_secure=False)


def test_settings_when_env_vars_set_read_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINAIOPS_ENVIRONMENT", "production")
    monkeypatch.setenv("CLINAIOPS_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("CLINAIOPS_DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert not s.is_sqlite


def test_settings_when_no_database_url_default_to_sqlite_under_data_dir() -> None:
    s = Settings(environment=Environment.DEV)
    assert s.database_url == "sqlite:///var/clinaiops.db"
    assert s.is_sqlite
