"""Send one product photo to autolabel and wait for its labels (boto3 + confluent-kafka).

examples/producer.py with confluent-kafka instead of kafka-python: only `send` differs. The one
setting that matters is `partitioner: murmur2_random`: librdkafka's default (consistent_random,
CRC32) puts a product on another partition than autolabel's own producers (`autolabel publish`,
`autolabel relabel`: murmur2, as Java and kafka-python), and then one product's uploads are no
longer in order. It needs only `pip install boto3 confluent-kafka`.

    # the embedded stack: every setting is in .autolabel/stack.env
    set -a; . .autolabel/stack.env; set +a
    python examples/producer_confluent.py samples/15970.jpg 15970 --title "Puma Men Blue Track Pants" --wait 60

Settings (the names autolabel itself reads; stack.env has them all):
    AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS  host:port[,host:port]       (required)
    AUTOLABEL_S3_ENDPOINT_URL          http://host:port; empty = AWS
    AUTOLABEL_S3_BUCKET                default autolabel
    AUTOLABEL_S3_REGION                default us-east-1
    AUTOLABEL_S3_ACCESS_KEY_ID, AUTOLABEL_S3_SECRET_ACCESS_KEY   unset = boto3's usual credentials
    AUTOLABEL_TOPIC_IMAGES             default product-images
    AUTOLABEL_S3_LABELS_PREFIX         default labels/ (where --wait reads the result)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
from botocore.config import Config
from confluent_kafka import Producer

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"AUTOLABEL_{name}") or default


def s3_client():  # noqa: ANN201
    return boto3.client(
        "s3", endpoint_url=env("S3_ENDPOINT_URL"), region_name=env("S3_REGION", "us-east-1"),
        aws_access_key_id=env("S3_ACCESS_KEY_ID"), aws_secret_access_key=env("S3_SECRET_ACCESS_KEY"),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def upload_photo(s3, bucket: str, photo: Path) -> str:  # noqa: ANN001
    """Put the photo at images/<sha256>.<ext> (same bytes, same key) and return the key."""
    data = photo.read_bytes()
    suffix = photo.suffix.lower()
    key = f"images/{hashlib.sha256(data).hexdigest()}{suffix}"
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=CONTENT_TYPES.get(suffix, "application/octet-stream"))
    return key


def upload_event(product_id: str, bucket: str, key: str, title: str | None, filename: str) -> dict:
    metadata = {"filename": filename, **({"title": title} if title else {})}
    return {
        "schema_version": 1,
        "type": "product.image.uploaded",
        "event_id": uuid.uuid4().hex,  # new for every upload; a retry of the same upload sends the same one
        "product_id": product_id,
        "image": {"s3": {"bucket": bucket, "key": key}, "url": None},
        "uploaded_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "metadata": metadata,
    }


def send(event: dict, bootstrap: list[str], topic: str) -> tuple[int, int]:
    """Produce the event keyed by its product id; return (partition, offset) once the broker has it."""
    producer = Producer({
        "bootstrap.servers": ",".join(bootstrap),
        "partitioner": "murmur2_random",  # murmur2, as autolabel's producers: same product, same partition
        "acks": "all",
        "allow.auto.create.topics": False,  # never create a misspelt topic
        "enable.idempotence": False,  # the embedded broker (Tansu) has no idempotent producers
    })
    if topic not in producer.list_topics(timeout=10).topics:  # lists all topics; creates none
        sys.exit(f"topic {topic!r} does not exist on {','.join(bootstrap)}: check AUTOLABEL_TOPIC_IMAGES")
    delivered = []
    producer.produce(topic, key=event["product_id"].encode(), value=json.dumps(event).encode(),
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    if producer.flush(30) or not delivered:
        sys.exit("the broker did not acknowledge the event within 30 s")
    err, msg = delivered[0]
    if err is not None:
        sys.exit(f"the broker refused the event: {err}")
    return msg.partition(), msg.offset()


def wait_for_labels(s3, bucket: str, event: dict, timeout: float) -> dict | None:  # noqa: ANN001
    """The stored record of this upload (labels/<product_id>.json naming our event id), or None."""
    key = f"{env('S3_LABELS_PREFIX', 'labels/')}{event['product_id']}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            record = None
        if record and record["source_event_id"] == event["event_id"]:
            return record
        time.sleep(0.5)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("product_id", help="1-128 letters, digits, '.', '_', '-'; starts with a letter or digit; no '..'")
    parser.add_argument("--title", help="the product's title: the model reads it beside the photo")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait this long for the labels")
    args = parser.parse_args()
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        sys.exit("set AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS (embedded stack: `set -a; . .autolabel/stack.env; set +a`)")
    bucket, topic = env("S3_BUCKET", "autolabel"), env("TOPIC_IMAGES", "product-images")

    s3 = s3_client()
    key = upload_photo(s3, bucket, args.photo)
    event = upload_event(args.product_id, bucket, key, args.title, args.photo.name)
    partition, offset = send(event, bootstrap.split(","), topic)
    print(json.dumps({"event_id": event["event_id"], "product_id": args.product_id, "key": key,
                      "topic": topic, "partition": partition, "offset": offset}))
    if args.wait:
        record = wait_for_labels(s3, bucket, event, args.wait)
        if record is None:
            sys.exit(f"no labels for {args.product_id} after {args.wait:.0f} s (is a worker running? see its dead letters)")
        print(json.dumps({"labels": {task: v["label"] for task, v in record["labels"].items()},
                          "needs_review": record["needs_review"], "record": record}))


if __name__ == "__main__":
    main()
