"""Reading settings names and defaults, for the tests that check deploy files against them."""

from __future__ import annotations

from pydantic import SecretStr

from services.settings import ENV_PREFIX, Settings


def field_of(var: str) -> str:
    """``AUTOLABEL_FOO_BAR`` -> ``foo_bar``."""
    assert var.startswith(ENV_PREFIX), var
    return var[len(ENV_PREFIX):].lower()


def default_of(name: str) -> object:
    """A setting's default as a plain value (secrets revealed, enums as their value)."""
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return getattr(value, "value", value)
