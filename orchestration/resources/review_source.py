"""The review source's API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg

from streaming.ingest.backfill import BackfillResult, backfill_course
from streaming.ingest.producer import ReviewProducer
from streaming.settings import Settings, client_secret
from streaming.source.client import RetryPolicy, UdemyClient


class ReviewSourceResource(dg.ConfigurableResource):
    """The Udemy-compatible review API (the real one or the project's local server)."""

    api_url: str
    client_id: str
    client_secret: str | None = None
    """None: UDEMY_CLIENT_SECRET or UDEMY_CLIENT_SECRET_FILE's content, read when used (a
    secret is not a config value Dagster stores and shows)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ReviewSourceResource:
        """At the deployment's review source (UDEMY_API_URL, UDEMY_CLIENT_ID)."""
        return cls(api_url=settings.source.api_url, client_id=settings.source.client_id)

    def client(self, **options: Any) -> UdemyClient:
        secret = self.client_secret or client_secret()
        return UdemyClient(self.api_url, self.client_id, secret, **options)

    def course_ids(self) -> list[int]:
        """Every course the source lists; retries are few, a sensor tick must stay short."""
        with self.client(retry=RetryPolicy(attempts=2, rate_limited_attempts=2)) as client:
            return [int(course["id"]) for course in client.iter_courses()]

    def backfill(self, settings: Settings, course_ids: Iterable[int]) -> Iterator[BackfillResult]:
        """Produce every review of each course into the input topic, one course after another
        over one producer; a result once the broker acknowledged all of a course's records."""
        producer = ReviewProducer(settings)
        with self.client() as client:
            for course_id in course_ids:
                yield backfill_course(course_id, source_client=client, producer=producer)
