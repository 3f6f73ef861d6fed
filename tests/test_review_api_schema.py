"""The review API against its own OpenAPI schema (schemathesis): every operation, with
property-based inputs, authenticated as a reviewer, on the real stack. No response may be a
5xx, and every response must match the schema the app publishes."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from conftest import SAMPLES
from review_helpers import TOKENS, ReviewApp, flagged_event, send_flagged

pytestmark = pytest.mark.stack

AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}


@pytest.fixture()
def api_schema(stack_settings, tmp_path):
    stack, env = stack_settings
    photos = sorted(SAMPLES.glob("*.jpg"))[:3]
    send_flagged(stack, [flagged_event(stack, f"api-{i}", p.read_bytes()) for i, p in enumerate(photos)])
    # the limiter would answer 429 to the generated wrong tokens long before the examples end
    app = ReviewApp({**env, "AUTOLABEL_REVIEW_AUTH_FAILURES_PER_CLIENT": "100000", "AUTOLABEL_REVIEW_AUTH_FAILURES_TOTAL": "100000"},
                    tmp_path).start()
    app.wait_waiting(3)
    yield schemathesis.openapi.from_url(f"{app.url}/api/openapi.json", headers=AUTH)
    app.kill()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_the_review_api_never_fails_and_matches_its_schema(case):
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance, status_code_conformance])
