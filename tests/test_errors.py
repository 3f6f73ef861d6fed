"""services.errors: which failure is an outage (retried), the record's fault (dead letter)
or a failed attempt, for each server, without any server."""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from tritonclient.utils import InferenceServerException

from services.errors import (
    BadInput,
    InferenceError,
    ModelMissing,
    TransientError,
    classify_s3_error,
    classify_triton_error,
    s3_outage,
    transient_http_status,
)
from services.events import ErrorCode


def _triton(msg: str, status: str | None) -> type:
    return type(classify_triton_error(InferenceServerException(msg, status=status), "infer"))


def test_triton_errors_are_classified_by_status_not_by_message_words() -> None:
    """A model's own error text ("refused", "timeout") must not turn a poison input into an outage."""
    assert _triton("poison image refused, connection timed out", "StatusCode.INTERNAL") is InferenceError
    assert _triton("Failed to process: Stub process 'autolabel_0_0' is not healthy.", "StatusCode.INTERNAL") is TransientError
    assert _triton("failed to connect to all addresses", "StatusCode.UNAVAILABLE") is TransientError
    assert _triton("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED") is TransientError
    assert _triton("input too large, server unavailable", "StatusCode.INVALID_ARGUMENT") is InferenceError
    assert _triton("Request for unknown model: 'autolabel' is not found", "StatusCode.NOT_FOUND") is ModelMissing
    assert _triton("Request for unknown model: 'autolabel' is not found", "400") is ModelMissing
    assert _triton("busy", "503") is TransientError and _triton("bad input, timed out", "400") is InferenceError
    assert _triton("Server disconnected", None) is InferenceError  # a client-side error, no answer


def test_triton_failures_without_an_answer_are_outages() -> None:
    assert type(classify_triton_error(ConnectionRefusedError(), "infer")) is TransientError
    assert type(classify_triton_error(TimeoutError(), "infer")) is TransientError
    assert type(classify_triton_error(aiohttp.ServerDisconnectedError(), "infer")) is TransientError
    assert issubclass(ModelMissing, TransientError)


def test_s3_errors() -> None:
    def client_error(status: int, code: str) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert isinstance(classify_s3_error(client_error(503, "ServiceUnavailable"), "put_object"), TransientError)
    assert isinstance(classify_s3_error(client_error(429, "x"), "put_object"), TransientError)
    assert isinstance(classify_s3_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "put_object"), TransientError)
    assert isinstance(classify_s3_error(ConnectionResetError(), "put_object"), TransientError)
    denied = client_error(403, "AccessDenied")
    assert classify_s3_error(denied, "put_object") is denied  # not an outage: raised as it is
    assert isinstance(s3_outage(RuntimeError("x"), "get"), TransientError)


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (429, True), (404, False), (400, False), (200, False)])
def test_http_status(status: int, transient: bool) -> None:
    assert transient_http_status(status) is transient


def test_bad_input_carries_its_code() -> None:
    err = BadInput(ErrorCode.image_unreadable, "not a photo")
    assert err.code is ErrorCode.image_unreadable and str(err) == "not a photo" and isinstance(err, ValueError)
