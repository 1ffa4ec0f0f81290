"""Historical backfill: every review of a course from the review source into `udemy-reviews`."""

import dagster as dg

from orchestration.resources import KafkaResource, ReviewSourceResource, SchemaRegistryResource
from orchestration.topology import BACKFILL_KEY

courses = dg.DynamicPartitionsDefinition(name="courses")
"""Course ids (decimal strings) the review source lists; the catalogue sensor adds new ones."""


@dg.asset(
    key=BACKFILL_KEY,
    partitions_def=courses,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingest",
    kinds={"python", "kafka"},
)
def course_reviews(
    context: dg.AssetExecutionContext,
    kafka: KafkaResource,
    schema_registry: SchemaRegistryResource,
    review_source: ReviewSourceResource,
) -> dg.MaterializeResult:
    """Every review of the selected courses, walked page by page from the review source and
    produced into `udemy-reviews`; a backfill of "all courses" is one run (single-run policy).

    Safe to re-run, whole or for some courses: the stream counts each review id once at its
    current version (greatest `modified`, then the later record), so versions sent again
    change no statistic (the sink's `reviews` table keeps them as records of their own, one
    row per Kafka offset, and the batch picks the same current version).
    """
    settings = kafka.settings(schema_registry.url)
    keys = context.partition_keys
    results = []
    for result in review_source.backfill(settings, (int(key) for key in keys)):
        offsets = {str(p): o for p, o in sorted(result.offsets.items())}
        context.log_event(
            dg.AssetObservation(
                asset_key=BACKFILL_KEY,
                partition=str(result.course_id),
                metadata={
                    "reviews": result.reviews,
                    "rejected": result.rejected,
                    "seconds": round(result.seconds, 3),
                    "last_offsets": dg.MetadataValue.json(offsets),
                },
            )
        )
        context.log.info(
            f"course {result.course_id}: {result.reviews} reviews in {result.seconds:.1f}s, "
            f"{result.rejected} rejected, last offsets {offsets}"
        )
        results.append(result)
    last: dict[int, int] = {}
    for result in results:
        for partition, offset in result.offsets.items():
            last[partition] = max(offset, last.get(partition, -1))
    rows = "\n".join(
        f"| {r.course_id} | {r.reviews} | {r.rejected} | {r.seconds:.1f} |" for r in results
    )
    return dg.MaterializeResult(
        metadata={
            "courses": len(results),
            "reviews": sum(r.reviews for r in results),
            "rejected": sum(r.rejected for r in results),
            "seconds": round(sum(r.seconds for r in results), 3),
            "last_offsets": dg.MetadataValue.json({str(p): o for p, o in sorted(last.items())}),
            "per_course": dg.MetadataValue.md(
                "| course | reviews | rejected | seconds |\n|---|---|---|---|\n" + rows
            ),
        }
    )
