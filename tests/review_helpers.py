"""Helpers for the review app's tests: the app as a real process on the session stack."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from conftest import wait_for
from kafka import KafkaProducer

from autolabel.review import ReviewProcess
from deploy.local.processes import free_ports
from services.events import ImageLocation, ModelInfo, ProductLabeled, TaskLabel
from services.storage import Storage

TOKENS = {"alice": "tok-alice-7c1f", "bob": "tok-bob-29ae"}
TOKENS_ENV = ",".join(f"{n}:{t}" for n, t in TOKENS.items())


class ReviewApp:
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.port = free_ports(1)[0]
        self.env = {**env, "AUTOLABEL_REVIEW_TOKENS": TOKENS_ENV, "AUTOLABEL_REVIEW_PORT": str(self.port),
                    "AUTOLABEL_REVIEW_DATABASE_URL": f"sqlite:///{tmp_path / 'review.db'}"}
        self.log = tmp_path / "review.log"
        self.proc: ReviewProcess | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReviewApp":
        self.proc = ReviewProcess(self.env, self.log, "review").start()

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 60, interval=0.3), f"review app did not start:\n{self.output()[-3000:]}"
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.proc.wait(10)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(15)

    def output(self) -> str:
        return self.proc.output() if self.proc else ""

    def api(self, who: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stats(self) -> dict:
        with self.api() as c:
            return c.get("/api/stats").json()

    def wait_waiting(self, n: int, timeout: float = 60) -> dict:
        got = wait_for(lambda: (s := self.stats())["waiting"] + s["done"] >= n and s, timeout, interval=0.5)
        assert got, f"the queue never reached {n}: {self.stats()}\n{self.output()[-2000:]}"
        return got

    def login(self, who: str = "alice") -> httpx.Client:
        """A browser-like session: GET /login for the CSRF token, POST the token."""
        c = httpx.Client(base_url=self.url, timeout=30)
        csrf = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"token": TOKENS[who], "csrf_token": csrf})
        assert r.status_code == 303, r.text
        return c


def review_apps(stack_settings, tmp_path: Path) -> Iterator:
    """The body of a test module's ``review_app`` fixture: make() -> a started ReviewApp on
    this test's topics; every one is killed afterwards."""
    _, env = stack_settings
    apps: list[ReviewApp] = []

    def make() -> ReviewApp:
        app = ReviewApp(env, tmp_path).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.kill()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def flagged_event(settings, product_id: str, photo: bytes, style=(0.40, 0.35, 0.25), version: str = "test-1") -> ProductLabeled:
    """A flagged label event of a real photo put in the stack's S3 (what a worker would publish)."""
    location = Storage(settings).put_image(photo)

    def task(classes, probs, threshold=0.6) -> TaskLabel:
        best = max(range(len(classes)), key=lambda i: probs[i])
        return TaskLabel(label=classes[best], confidence=probs[best], probabilities=dict(zip(classes, probs, strict=True)),
                         threshold=threshold, needs_review=probs[best] < threshold)

    labels = {"style": task(("casual", "formal", "sports"), style), "gender": task(("men", "women"), (0.9, 0.1)),
              "season": task(("spring-fall", "summer", "winter"), (0.7, 0.2, 0.1))}
    return ProductLabeled(product_id=product_id, source_event_id=f"up-{product_id}", image=ImageLocation(s3=location),
                          labels=labels, model=ModelInfo(name="test", version=version, backbone="tiny", weights_source="random"),
                          needs_review=any(t.needs_review for t in labels.values()), latency_ms=5.0,
                          metadata={"title": f"Test shirt {product_id}"})


def send_flagged(settings, events: list[ProductLabeled], store: bool = True) -> None:
    """Put them where a worker would: the S3 record, then topic_labels (and topic_review if flagged)."""
    import asyncio

    from services.storage import LabelStore

    if store:
        asyncio.run(LabelStore(settings).put_labels([(e, e.to_bytes()) for e in events]))
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5)
    for e in events:
        producer.send(settings.topic_labels, key=e.product_id.encode(), value=e.to_bytes())
        if e.needs_review:
            producer.send(settings.topic_review, key=e.product_id.encode(), value=e.to_bytes())
    producer.flush(30)
    producer.close()
