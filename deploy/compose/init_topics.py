"""topic-init (docker compose): create autolabel's topics with explicit partition counts.

Topic names, the partition count (AUTOLABEL_TOPIC_PARTITIONS) and the Kafka connection
(including SASL/TLS) all come from the project's settings, via services.topics, so this
step can never disagree with the workers. Idempotent: existing topics are kept; one with
fewer partitions than asked is grown (Kafka cannot shrink a topic). Exits non-zero on
failure so that `depends_on: condition: service_completed_successfully` holds the workers.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--wait-s", type=float, default=60.0, help="Retry this long for the broker.")
    args = parser.parse_args(argv)

    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions

    from services.settings import load_settings
    from services.topics import ensure_topics, topic_names

    settings = load_settings()
    deadline = time.monotonic() + args.wait_s
    while True:
        try:
            created = ensure_topics(settings, replication_factor=args.replication_factor)
            break
        except Exception as exc:  # noqa: BLE001 - the broker may still be electing
            if time.monotonic() > deadline:
                print(f"topic-init: giving up: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)

    want = settings.topic_partitions
    admin = KafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=10000)
    try:
        grow: dict[str, NewPartitions] = {}
        for desc in admin.describe_topics(topic_names(settings)):
            have = len(desc.get("partitions", []))
            name = desc.get("topic") or desc.get("name")  # key differs across kafka-python versions
            state = "created" if name in created else "exists"
            print(f"topic-init: {name}: {have} partitions ({state}; want {want})")
            if have < want:
                grow[name] = NewPartitions(total_count=want)
        if grow:
            admin.create_partitions(grow)
            print(f"topic-init: grew {sorted(grow)} to {want} partitions")
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
