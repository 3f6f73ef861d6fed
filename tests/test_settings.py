import subprocess
import sys

import pytest

from services.settings import ENV_PREFIX, Settings, SettingsError, load_settings, settings_table


def test_env_vars_drive_settings(monkeypatch):
    monkeypatch.setenv("AUTOLABEL_BATCH_MAX_SIZE", "32")
    monkeypatch.setenv("AUTOLABEL_URL_ALLOW_HOSTS", "cdn.example.com, Images.Example.org")
    monkeypatch.setenv("AUTOLABEL_TRITON_PROTOCOL", "http")
    s = load_settings()
    assert s.batch_max_size == 32
    assert s.url_allow_hosts == ["cdn.example.com", "images.example.org"]
    assert s.triton_protocol.value == "http"


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("AUTOLABEL_BATCH_MAX_SIZE", "lots")
    with pytest.raises(SettingsError, match="AUTOLABEL_BATCH_MAX_SIZE"):
        load_settings()


def test_unknown_enum_value_is_refused(monkeypatch):
    monkeypatch.setenv("AUTOLABEL_TRITON_PROTOCOL", "carrier-pigeon")
    with pytest.raises(SettingsError, match="AUTOLABEL_TRITON_PROTOCOL"):
        load_settings()


def test_prefixes_cannot_escape():
    with pytest.raises(Exception, match="no '..'"):
        Settings(s3_labels_prefix="../other/")


def test_secrets_are_masked():
    s = Settings(s3_secret_access_key="topsecret-value", kafka_sasl_password="hunter2-pass")
    text = repr(s) + str(s.model_dump(mode="json"))
    assert "topsecret-value" not in text and "hunter2-pass" not in text


def test_table_lists_every_setting():
    names = {row[0] for row in settings_table()}
    assert names == {f"{ENV_PREFIX}{f.upper()}" for f in Settings.model_fields}


def test_cli_reports_bad_setting_without_traceback():
    env = {"AUTOLABEL_TOPIC_PARTITIONS": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "autolabel", "settings"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "AUTOLABEL_TOPIC_PARTITIONS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_configuration_table_is_complete():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name, _, _ in settings_table() if name not in readme]
    assert not missing, f"README lacks {missing}"


def test_readme_configuration_rows_are_the_settings_own_words():
    """The README table says it is generated from services/settings.py: every row is the field's default and description."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()
    stale = []
    for name, default, description in settings_table():
        shown = {"None": "(unset)", "": "(empty)"}.get(default, f"`{default}`")
        row = f"| `{name}` | {shown} | {description} |"
        if row not in readme:
            stale.append(row)
    assert not stale, "README rows differ from services/settings.py:\n" + "\n".join(stale)


def test_thresholds_unset_or_empty_mean_the_models_own(monkeypatch):
    from services.settings import load_settings

    monkeypatch.setenv("AUTOLABEL_THRESHOLD_STYLE", "")
    monkeypatch.setenv("AUTOLABEL_THRESHOLD_GENDER", "0.7")
    s = load_settings()
    assert s.threshold("style") is None and s.threshold("gender") == 0.7 and s.threshold("season") is None
    assert s.target_precision == 0.95


def test_an_empty_kafka_ca_file_means_the_system_cas(tmp_path):
    from services.settings import Settings

    empty, bundle = tmp_path / "ca.crt", tmp_path / "bundle.pem"
    empty.write_text("")
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings(kafka_ssl_cafile=empty).kafka_ca_path is None
    assert "ssl_cafile" not in Settings(kafka_ssl_cafile=empty, kafka_security_protocol="SSL").kafka_client_kwargs()
    assert Settings(kafka_ssl_cafile=bundle).kafka_ca_path == str(bundle)
    assert Settings().kafka_ca_path is None
