"""The per-course backfill asset: one run for many courses, counts and offsets as metadata."""

from collections.abc import Iterable, Iterator

import dagster as dg

from orchestration.assets.backfill import course_reviews, courses
from orchestration.resources import KafkaResource, ReviewSourceResource, SchemaRegistryResource
from orchestration.topology import BACKFILL_KEY
from streaming.ingest.backfill import BackfillResult
from streaming.settings import Settings


class RecordingSource(ReviewSourceResource):
    """Pretends to backfill: course c has c reviews, written to partition c % 4."""

    def backfill(self, settings: Settings, course_ids: Iterable[int]) -> Iterator[BackfillResult]:
        assert settings.kafka_bootstrap_servers == "broker.test:9092"
        assert settings.schema_registry_url == "http://registry.test"
        for course_id in course_ids:
            yield BackfillResult(course_id, reviews=course_id, offsets={course_id % 4: course_id})


def test_all_courses_are_one_run_with_counts_and_offsets() -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(courses.name, ["5", "6", "9"])
    result = dg.materialize(
        [course_reviews],
        instance=instance,
        resources={
            "kafka": KafkaResource(bootstrap_servers="broker.test:9092"),
            "schema_registry": SchemaRegistryResource(url="http://registry.test"),
            "review_source": RecordingSource(
                api_url="http://s.test", client_id="i", client_secret="s"
            ),
        },
        tags={
            "dagster/asset_partition_range_start": "5",
            "dagster/asset_partition_range_end": "9",
        },
    )
    assert result.success
    materialisations = result.asset_materializations_for_node("ingest__course_reviews")
    assert sorted(m.partition for m in materialisations) == ["5", "6", "9"]
    metadata = materialisations[0].metadata
    assert metadata["reviews"].value == 20
    assert metadata["courses"].value == 3
    assert metadata["last_offsets"].value == {"1": 9, "2": 6}
    observations = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    by_course = {o.partition: o.metadata["reviews"].value for o in observations}
    assert by_course == {"5": 5, "6": 6, "9": 9}
    assert all(o.asset_key == BACKFILL_KEY for o in observations)


def test_the_asset_is_a_single_run_backfill() -> None:
    assert course_reviews.backfill_policy == dg.BackfillPolicy.single_run()
    assert course_reviews.partitions_def == courses
    assert "change no statistic" in (course_reviews.descriptions_by_key[BACKFILL_KEY] or "")
