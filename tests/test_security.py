"""Input security: keys stay in their prefix, one bucket, no SSRF, bounded events, no leaked secrets.

Pure tests, except the last two, which run real workers on the session stack. URL tests
send nothing anywhere but 127.0.0.1: names other than ``localhost`` are resolved by a
monkeypatched ``socket.getaddrinfo``, literal addresses with ``AI_NUMERICHOST`` only.
"""

from __future__ import annotations

import base64
import http.server
import json
import posixpath
import random
import re
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from services.errors import BadInput, TransientError
from services.events import ErrorCode, ImageLocation, ProductImageUploaded, S3Location, label_key
from services.settings import Settings
from services.sources import check_url, fetch_url
from services.storage import image_key

# --- S3 keys derived from product ids ---------------------------------------------------

HOSTILE_IDS = [
    "..", "../etc/passwd", "a/../../b", "/etc/passwd", "a/b", "a\\b", "..\\..\\x", "a..b", "a\x00b", "a\nb",
    "a\rb", "a\tb", "x\x7f", "\x1b[31m", ".hidden", "-rf", "_x", "", "x" * 129, "%2e%2e%2f", "a%2fb", "a b",
    "a:b", "a?b", "a#b", "a*b", "~root", "${jndi:ldap://x}", "<script>", "ａ", "é", "a\u2028b", "a\u202eb",
]


@pytest.mark.parametrize("pid", HOSTILE_IDS, ids=repr)
def test_hostile_product_ids_are_refused_for_keys_and_events(pid: str) -> None:
    with pytest.raises(ValueError):
        label_key("labels/", pid)
    with pytest.raises(ValidationError):
        ProductImageUploaded(product_id=pid, image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/a.jpg")))


def test_fuzzed_product_ids_never_leave_the_label_prefix() -> None:
    """Whatever id gets through validation becomes a key directly under the prefix."""
    alphabet = "aZ09._-/\\%\x00\n\r\t ~:?#*é\u202e" + "." * 6
    rng = random.Random(7)
    accepted = 0
    for _ in range(5000):
        pid = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            key = label_key("labels/", pid)
        except ValueError:
            continue
        accepted += 1
        name = key.removeprefix("labels/")
        assert key.startswith("labels/") and posixpath.normpath(key) == key
        assert "/" not in name and "\\" not in name and name not in {".", ".."} and not name.startswith(".")
        assert name.isascii() and name.isprintable() and name.endswith(".json")
    assert accepted > 50  # the fuzz also exercised the accepting side


@pytest.mark.parametrize("key", ["/etc/passwd", "../x.jpg", "images/../../x.jpg", "images/..", "a\x00.jpg",
                                 "a\r\nb.jpg", "a\x7f.jpg", "images/\x1b.jpg", ""])
def test_unsafe_object_keys_in_events_are_refused(key: str) -> None:
    with pytest.raises(ValidationError):
        S3Location(bucket="autolabel", key=key)


@pytest.mark.parametrize("prefix", ["/abs/", "../labels/", "labels/../../", "labels"])
def test_key_prefixes_cannot_escape(prefix: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, s3_labels_prefix=prefix)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, s3_images_prefix=prefix)


def test_image_keys_are_content_addressed_under_the_prefix() -> None:
    key = image_key("images/", b"../../etc/passwd", ".jpg")
    assert key.startswith("images/") and "/" not in key.removeprefix("images/") and len(key) == len("images/") + 64 + 4


# --- URLs: allow-list and addresses after resolution ------------------------------------

REAL_GETADDRINFO = socket.getaddrinfo


def _numeric_only(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
    """getaddrinfo that never asks DNS: literal addresses only."""
    return REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def _resolving(table: dict[str, list[str]]):
    """A fake getaddrinfo: name -> addresses (a public name made to resolve anywhere)."""

    def fake(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown in this test")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    return fake


def _refused(url: str, allow: list[str]) -> str:
    with pytest.raises(BadInput) as info:
        check_url(url, allow)
    assert info.value.code == ErrorCode.url_not_allowed
    return str(info.value)


def test_hosts_off_the_allow_list_are_refused_before_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(*a, **k):
        raise AssertionError("no DNS lookup for a host that is not allow-listed")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    assert "not on AUTOLABEL_URL_ALLOW_HOSTS" in _refused("https://evil.example.com/a.jpg", ["images.example.com"])
    _refused("https://images.example.com.evil.example/a.jpg", ["images.example.com"])
    _refused("https://169.254.169.254/latest/meta-data/", [])  # empty list (the default): nothing is fetched


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example.com/a.jpg", "gopher://images.example.com/",
                                 "http:///a.jpg", "https://user:pw@images.example.com/a.jpg", "https://:pw@images.example.com/"])
def test_other_schemes_missing_hosts_and_userinfo_are_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving({"images.example.com": ["93.184.216.34"]}))
    _refused(url, ["images.example.com"])


LITERAL_NON_PUBLIC = [
    "http://127.0.0.1/", "http://127.1/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/",
    "http://0.0.0.0/", "http://10.0.0.8/", "http://172.16.5.4/", "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/", "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
    "http://100.100.100.200/latest/meta-data/",  # shared address space (Alibaba Cloud metadata)
    "http://224.0.0.1/", "http://[::1]/", "http://[::]/", "http://[fe80::1]/", "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/", "http://[::ffff:127.0.0.1]/",
]


@pytest.mark.parametrize("url", LITERAL_NON_PUBLIC)
def test_non_public_addresses_are_refused_even_when_allow_listed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _numeric_only)
    host = urlsplit(url).hostname
    assert "non-public" in _refused(url, [host])


def test_localhost_is_refused_after_resolution() -> None:
    assert "non-public" in _refused("http://localhost:8080/a.jpg", ["localhost"])


@pytest.mark.parametrize("addresses", [["169.254.169.254"], ["93.184.216.34", "10.0.0.5"], ["127.0.0.1"],
                                       ["2606:2800:220:1:248:1893:25c8:1946", "::1"], ["100.100.100.200"]])
def test_a_public_name_resolving_to_a_private_address_is_refused(addresses: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving({"images.example.com": addresses}))
    assert "non-public" in _refused("https://images.example.com/a.jpg", ["images.example.com"])


def test_a_public_name_resolving_to_public_addresses_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving({"images.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]}))
    assert check_url("https://Images.Example.com/a.jpg", ["images.example.com"]) == ("images.example.com", 443)


def test_a_failed_lookup_is_transient_not_a_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving({}))
    with pytest.raises(TransientError):
        check_url("https://images.example.com/a.jpg", ["images.example.com"])


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    redirect_to = ""

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", type(self).redirect_to)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def local_http() -> Iterator[tuple[int, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"hits": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_connects_to_the_checked_address_not_a_second_dns_answer(monkeypatch: pytest.MonkeyPatch, local_http) -> None:
    """DNS rebinding: the first answer is public, the next one loopback. Only the first counts."""
    port, handler = local_http
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])

    def rebinding(host, port_, family=0, type=0, proto=0, flags=0):  # noqa: A002
        if host == "93.184.216.34":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port_))]
        return _resolving({"images.example.com": next(answers)})(host, port_)

    connected: list[tuple[str, int]] = []

    def refuse_connect(address, *a, **k):
        connected.append(address)
        raise ConnectionRefusedError("test: no traffic leaves this machine")

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", refuse_connect)
    settings = Settings(_env_file=None, url_allow_hosts="images.example.com")
    with pytest.raises(TransientError):
        fetch_url(f"http://images.example.com:{port}/a.jpg", settings)
    assert connected == [("93.184.216.34", port)]
    assert handler.hits == [], "the loopback server was never reached"


def test_redirects_are_not_followed(monkeypatch: pytest.MonkeyPatch, local_http) -> None:
    """A 302 to the metadata service is an error, not a second request (server on 127.0.0.1)."""
    port, handler = local_http
    handler.redirect_to = f"http://127.0.0.1:{port}/latest/meta-data/iam"
    import services.sources as sources

    def checked_as_public(url: str, allow: list[str]) -> tuple[str, int, str]:  # the server is local; pretend it is public
        return "images.example.com", port, "127.0.0.1"

    monkeypatch.setattr(sources, "_resolve_checked", checked_as_public)
    with pytest.raises(BadInput) as info:
        fetch_url(f"http://images.example.com:{port}/a.jpg", Settings(_env_file=None, url_allow_hosts="images.example.com"))
    assert info.value.code == ErrorCode.image_not_found and "302" in str(info.value)
    assert handler.hits == ["/a.jpg"], "exactly one request: the redirect was not followed"


# --- event size -------------------------------------------------------------------------


def test_events_over_the_size_limit_are_refused_before_parsing() -> None:
    from services.pipeline import RawMessage, parse_event

    limit = 1024
    huge = b"{" + b" " * (limit + 1)  # not even JSON: the size check comes first
    with pytest.raises(BadInput) as info:
        parse_event(RawMessage("t", 0, 0, b"k", huge), limit)
    assert info.value.code == ErrorCode.event_too_large
    event = ProductImageUploaded(product_id="p1", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/a.jpg")),
                                 metadata={"pad": "x" * 200})
    raw = event.to_bytes()
    assert parse_event(RawMessage("t", 0, 0, b"p1", raw), len(raw)).product_id == "p1"  # at the limit: accepted
    with pytest.raises(BadInput):
        parse_event(RawMessage("t", 0, 0, b"p1", raw), len(raw) - 1)
    assert Settings(_env_file=None).max_event_bytes == 64 * 1024


# --- transport security is configurable -------------------------------------------------


def test_kafka_sasl_and_tls_are_configurable(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    s = Settings(_env_file=None, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc-autolabel", kafka_sasl_password="pw-Kq7", kafka_ssl_cafile=ca)
    kw = s.kafka_client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc-autolabel" and kw["sasl_plain_password"] == "pw-Kq7"
    assert kw["ssl_cafile"] == str(ca)
    assert "pw-Kq7" not in repr(s) and "pw-Kq7" not in str(s.model_dump())

    from services.worker import _broker_credentials

    creds = _broker_credentials(Settings(_env_file=None, kafka_security_protocol="SASL_PLAINTEXT",
                                         kafka_sasl_username="u", kafka_sasl_password="pw-Kq7"))
    assert creds is not None and creds.username == "u" and creds.password == "pw-Kq7"
    assert _broker_credentials(Settings(_env_file=None, kafka_security_protocol="SSL")) is not None
    assert _broker_credentials(Settings(_env_file=None)) is None


def test_https_to_s3_with_verification_is_configurable() -> None:
    from services.storage import make_s3_client

    s = Settings(_env_file=None, s3_endpoint_url="https://s3.example.com")
    client = make_s3_client(s)
    assert client.meta.endpoint_url == "https://s3.example.com"
    assert Settings(_env_file=None).s3_verify_tls is True
    assert Settings(_env_file=None, s3_verify_tls="false").s3_verify_tls is False


# --- credentials never in logs or dead letters -----------------------------------------

SASL_PASSWORD = "sasl-pw-Xy7Kq2-DO-NOT-LOG"
WRONG_S3_SECRET = "wrong-s3-secret-Vb4n-DO-NOT-LOG"


def test_settings_output_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from autolabel.cli import settings_command

    monkeypatch.setenv("AUTOLABEL_S3_SECRET_ACCESS_KEY", WRONG_S3_SECRET)
    monkeypatch.setenv("AUTOLABEL_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    for args in ([], ["--json"]):
        result = CliRunner().invoke(settings_command, args)
        assert result.exit_code == 0, result.output
        assert "S3_SECRET_ACCESS_KEY" in result.output.upper()
        assert WRONG_S3_SECRET not in result.output and SASL_PASSWORD not in result.output
    s = Settings(_env_file=None, s3_secret_access_key=SecretStr(WRONG_S3_SECRET))
    assert WRONG_S3_SECRET not in repr(s) and WRONG_S3_SECRET not in s.model_dump_json()


def _secrets_in(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


@pytest.mark.stack
def test_workers_never_log_or_dead_letter_credentials(stack_settings, worker_factory) -> None:
    """Real workers at debug level, with a distinctive S3 secret and SASL password, on good and
    bad input; a second worker with a wrong S3 secret fails on every S3 call. Neither secret,
    nor the access key id, shows up in their output or in any dead-letter record."""
    import time

    from conftest import SAMPLES, STACK_S3_ACCESS_KEY_ID, STACK_S3_SECRET_ACCESS_KEY, wait_for
    from kafka import KafkaProducer

    from services.events import DeadLetter
    from services.storage import Storage
    from services.topics import read_labels, read_topic

    settings, _ = stack_settings
    secrets = [STACK_S3_SECRET_ACCESS_KEY, STACK_S3_ACCESS_KEY_ID, SASL_PASSWORD, WRONG_S3_SECRET]
    storage = Storage(settings)
    # a second bucket on the same server, with an object at a key the worker could read
    other = "other-bucket-sec"
    try:
        storage.client.create_bucket(Bucket=other)
    except storage.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    photo = sorted(SAMPLES.glob("*.jpg"))[0].read_bytes()
    good = storage.put_image(photo)
    storage.client.put_object(Bucket=other, Key=good.key, Body=photo)
    events = {
        "sec-good": ProductImageUploaded(product_id="sec-good", image=ImageLocation(s3=good)).to_bytes(),
        "sec-missing": ProductImageUploaded(product_id="sec-missing", image=ImageLocation(
            s3=S3Location(bucket=settings.s3_bucket, key="images/none.jpg"))).to_bytes(),
        "sec-other-bucket": ProductImageUploaded(product_id="sec-other-bucket", image=ImageLocation(
            s3=S3Location(bucket=other, key=good.key))).to_bytes(),
        "sec-url": ProductImageUploaded(product_id="sec-url", image=ImageLocation(url="http://169.254.169.254/latest/meta-data/iam")).to_bytes(),
        "sec-malformed": b"{not json",
        "sec-huge": b"{" + b" " * (settings.max_event_bytes + 1),
    }
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    for key, value in events.items():
        producer.send(settings.topic_images, key=key.encode(), value=value)
    producer.flush()
    producer.close()

    sasl = {"AUTOLABEL_KAFKA_SASL_USERNAME": "svc-autolabel", "AUTOLABEL_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
            "AUTOLABEL_LOG_LEVEL": "debug"}
    worker = worker_factory("sec", **sasl)
    # the same events, read by another group with a wrong secret: every S3 call is refused
    wrong = worker_factory("sec-wrong", AUTOLABEL_CONSUMER_GROUP=settings.consumer_group + "-wrong",
                           AUTOLABEL_TOPIC_DLQ=settings.topic_dlq + "-wrong-unused", AUTOLABEL_TOPIC_LABELS=settings.topic_labels + "-wrong-unused",
                           AUTOLABEL_S3_SECRET_ACCESS_KEY=WRONG_S3_SECRET, **sasl)

    def dead_letters() -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(r.value) for r in read_topic(settings, settings.topic_dlq, idle_s=1.0)]

    dead = wait_for(lambda: (d := dead_letters()) and len(d) >= 5 and d, 120, interval=1.0) or dead_letters()
    codes = {d.product_id or d.original_key: d.code for d in dead}
    assert codes == {"sec-missing": ErrorCode.image_not_found, "sec-other-bucket": ErrorCode.bucket_not_allowed,
                     "sec-url": ErrorCode.url_not_allowed, "sec-malformed": ErrorCode.malformed_json,
                     "sec-huge": ErrorCode.event_too_large}
    assert wait_for(lambda: [e for e in read_labels(settings, idle_s=1.0) if e.product_id == "sec-good"], 60)
    # its S3 calls were refused (403), and it said so, error text included
    assert wait_for(lambda: len(re.findall(r'"error": "S3[^\n]*403', wrong.output())) >= 2, 60), wrong.output()[-2000:]
    time.sleep(1)
    for w in (worker, wrong):
        w.kill()
        out = w.output()
        assert out.strip(), "the worker wrote logs"
        assert _secrets_in(out, secrets) == [], f"credentials in {w.log_path.name}"
    records = read_topic(settings, settings.topic_dlq, idle_s=1.0)
    for record in records:
        text = record.value.decode(errors="replace")
        original = base64.b64decode(json.loads(text)["original_b64"]).decode(errors="replace")
        assert _secrets_in(text + original + (record.key or b"").decode(errors="replace"), secrets) == []
