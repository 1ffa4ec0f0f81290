"""The settings model: defaults, parse errors that name the variable, and the generated
configuration reference kept in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.config import Settings
from streaming.settings import (
    COMPONENTS,
    ApiSettings,
    LoopSettings,
    SettingsError,
    env_name,
    load,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_is_generated_from_the_model() -> None:
    """docs/configuration.md must be `reviews config-reference`'s output: regenerate it
    (`.venv/bin/reviews config-reference > docs/configuration.md`) after changing a setting."""
    assert (ROOT / "docs" / "configuration.md").read_text() == reference_markdown()


def test_every_variable_has_a_description() -> None:
    for model in COMPONENTS:
        for name, info in model.model_fields.items():
            assert info.description, env_name(model, name, info)


def test_defaults_and_overrides() -> None:
    assert load(ApiSettings, {}).port == 8000
    assert load(ApiSettings, {"PIPELINE_API_PORT": "9000", "PIPELINE_API_WORKERS": ""}).workers == 2
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:1", "CONNECT_USER": "u"})
    assert s.kafka_bootstrap_servers == "b:1" and s.connect_user == "u"
    assert s.database_url.startswith("postgresql+psycopg2://")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"COMMIT_INTERVAL_MS": "soon"}, "COMMIT_INTERVAL_MS"),
        ({"COMMIT_EVERY_RECORDS": "0"}, "COMMIT_EVERY_RECORDS"),
        ({"SNAPSHOT_INTERVAL_S": "-1"}, "SNAPSHOT_INTERVAL_S"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load(LoopSettings, env)


def test_a_bad_security_config_entry_does_not_show_its_value() -> None:
    with pytest.raises(ValueError, match="entry 2") as bad:
        Settings.from_env({"KAFKA_SECURITY_CONFIG": "security.protocol=SASL_SSL;hunter2secret"})
    assert "hunter2secret" not in str(bad.value)
    assert "hunter2secret" not in repr(Settings(kafka_extra={"sasl.password": "hunter2secret"}))
