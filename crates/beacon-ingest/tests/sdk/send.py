"""Send a fixed scenario with an official SDK, unchanged, to a Beacon collector.

Usage: send.py posthog|posthog-v1|segment HOST WRITE_KEY BASE_TIME

posthog-v1 is the PostHog SDK in its opt-in capture v1 mode (/i/v1/analytics/events).

The Rust test (tests/ingest/sdk.rs) owns the expectations: every event here has
a fixed id and the time BASE_TIME + n seconds, so the test can check that each
one arrived exactly once, with the right name, users, time and properties.
Exits non-zero if the SDK reports an error (it gave up on a batch).
"""

import logging
import sys
from datetime import datetime, timedelta

errors = []


def on_error(error, batch):
    errors.append(f"{error} ({len(batch)} events)")


def at(base, seconds):
    return base + timedelta(seconds=seconds)


def posthog_scenario(host, key, base, capture_mode="v0"):
    from posthog import Posthog

    ph = Posthog(
        key,
        host=host,
        capture_mode=capture_mode,
        gzip=True,
        flush_at=100,
        flush_interval=0.05,
        max_retries=8,
        on_error=on_error,
    )
    uuid = "00000000-0000-4000-8000-00000000000{}".format
    ph.capture(
        "$pageview",
        distinct_id="ph-anon-1",
        properties={
            "$current_url": "https://shop.example/pricing?utm_source=newsletter",
            "$referrer": "https://www.google.com/",
            "$pathname": "/pricing",
        },
        timestamp=at(base, 0),
        uuid=uuid(1),
    )
    ph.capture(
        "signup_clicked",
        distinct_id="ph-anon-1",
        properties={"plan": "pro", "seats": 3},
        timestamp=at(base, 1),
        uuid=uuid(2),
    )
    # posthog-js identifies this way; the Python SDK sends any event unchanged.
    ph.capture(
        "$identify",
        distinct_id="ph-user-1",
        properties={"$anon_distinct_id": "ph-anon-1"},
        timestamp=at(base, 2),
        uuid=uuid(3),
    )
    ph.alias(previous_id="ph-anon-1", distinct_id="ph-user-1", timestamp=at(base, 3), uuid=uuid(4))
    ph.set(distinct_id="ph-user-1", properties={"name": "Ada"}, timestamp=at(base, 4), uuid=uuid(5))
    ph.capture(
        "purchase",
        distinct_id="ph-user-1",
        properties={"revenue": 19.99, "currency": "EUR", "sku": "pro-annual"},
        timestamp=at(base, 5),
        uuid=uuid(6),
    )
    ph.flush(timeout_seconds=120)
    ph.shutdown()


def segment_scenario(host, key, base):
    from segment.analytics.client import Client

    client = Client(
        write_key=key,
        host=host,
        gzip=True,
        max_retries=8,
        upload_interval=0.05,
        on_error=on_error,
    )
    client.page(
        anonymous_id="seg-anon-1",
        name="Pricing",
        properties={
            "url": "https://shop.example/pricing",
            "referrer": "https://news.ycombinator.com/",
            "path": "/pricing",
        },
        context={"userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "locale": "de-DE"},
        timestamp=at(base, 0),
        message_id="seg-1",
    )
    client.track(
        anonymous_id="seg-anon-1",
        event="Signup Clicked",
        properties={"plan": "pro", "seats": 3},
        timestamp=at(base, 1),
        message_id="seg-2",
    )
    client.identify(
        user_id="seg-user-1",
        anonymous_id="seg-anon-1",
        traits={"email": "ada@example.com"},
        timestamp=at(base, 2),
        message_id="seg-3",
    )
    client.alias(previous_id="seg-anon-1", user_id="seg-user-1", timestamp=at(base, 3), message_id="seg-4")
    client.track(
        user_id="seg-user-1",
        event="Order Completed",
        properties={"revenue": 19.99, "currency": "EUR", "sku": "pro-annual"},
        timestamp=at(base, 4),
        message_id="seg-5",
    )
    client.flush()
    client.shutdown()


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sdk, host, key, base = sys.argv[1:5]
    base = datetime.fromisoformat(base.replace("Z", "+00:00"))
    scenarios = {
        "posthog": posthog_scenario,
        "posthog-v1": lambda h, k, b: posthog_scenario(h, k, b, capture_mode="v1"),
        "segment": segment_scenario,
    }
    scenarios[sdk](host, key, base)
    if errors:
        print("the SDK gave up:", *errors, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
