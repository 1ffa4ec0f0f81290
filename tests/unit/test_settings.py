"""The settings model: defaults, parse errors that name the variable, and the generated
configuration reference kept in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.settings import (
    COMPONENTS,
    ApiSettings,
    LoopSettings,
    Settings,
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
    assert s.kafka_bootstrap_servers == "b:1" and s.connect.user == "u"
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


def test_a_kafka_login_reads_its_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2secret\n")
    env = {
        "KAFKA_SECURITY_CONFIG": "security.protocol=SASL_PLAINTEXT;sasl.mechanism=SCRAM-SHA-512;"
        "sasl.username=operator",
        "KAFKA_SASL_PASSWORD_FILE": str(secret),
    }
    config = Settings.from_env(env).kafka_config()
    assert config["sasl.username"] == "operator" and config["sasl.password"] == "hunter2secret"
    own = Settings.from_env({**env, "KAFKA_SASL_USERNAME": "aggregator"}).kafka_config()
    assert own["sasl.username"] == "aggregator"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_CONFIG": "sasl.username=u;sasl.password=hunter2secret"}, "sasl.password"),
        ({"KAFKA_SECURITY_CONFIG": "sasl.username=u"}, "KAFKA_SASL_PASSWORD_FILE must name"),
        ({"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "KAFKA_SASL_PASSWORD_FILE: cannot read"),
    ],
)
def test_a_kafka_secret_in_the_environment_or_missing_is_refused_by_name(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named) as refused:
        Settings.from_env(env)
    assert "hunter2secret" not in str(refused.value)


def test_a_bad_variable_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every component is read at a process's start (`Settings.from_env`): a value that does
    not parse stops the command with the variable's name, never a traceback."""
    from streaming import cli

    monkeypatch.setenv("COMMIT_INTERVAL_MS", "soon")
    assert cli.main(["bootstrap"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "COMMIT_INTERVAL_MS" in err and "Traceback" not in err
