package reviews.bench.kstreams;

import java.io.IOException;
import java.time.Duration;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Window;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The original aggregator: valid reviews re-keyed by course (so Streams repartitions), then
 * all-time statistics in a key-value store and recent statistics in 91-day windows hopping by
 * one day, each store backed by a changelog, each table streamed to its topic.
 *
 * <p>"Recent" is the original's: created within the last 91 days (the current window), not
 * our contract's 90 (docs/semantics.md); a window's grace is one day, the default of the
 * original's {@code TimeWindows.of}. Input keys are strings, as docs/contracts.md fixes them
 * (the original's were Long-typed, and it never read them).
 */
final class AggregateApp {
  private static final Duration WINDOW = Duration.ofDays(91);
  private static final Duration ADVANCE = Duration.ofDays(1);

  private AggregateApp() {}

  static Topology topology(Args args) throws IOException {
    ConfluentAvroSerde reviews =
        new ConfluentAvroSerde(args.schema("review-schema"), args.integer("review-schema-id"));
    Schema statSchema = args.schema("stat-schema");
    ConfluentAvroSerde longTerm =
        new ConfluentAvroSerde(statSchema, args.integer("long-term-schema-id"));
    ConfluentAvroSerde recent =
        new ConfluentAvroSerde(statSchema, args.integer("recent-schema-id"));
    Statistics stats = new Statistics(statSchema);
    Grouped<String, GenericRecord> byKey = Grouped.with(Serdes.String(), reviews);

    StreamsBuilder builder = new StreamsBuilder();
    // As in the original, a review's time is its creation time (windows are over it).
    KStream<String, GenericRecord> byCourse = builder
        .stream(args.get("input"), Consumed.with(Serdes.String(), reviews)
            .withTimestampExtractor((record, partitionTime) ->
                created((GenericRecord) record.value())))
        .peek(Main.firstRecord())
        .selectKey((reviewId, review) -> course(review).get("id").toString());

    byCourse.groupByKey(byKey)
        .aggregate(stats::empty, stats::add,
            Materialized.<String, GenericRecord, KeyValueStore<Bytes, byte[]>>as("long-term-stats")
                .withKeySerde(Serdes.String()).withValueSerde(longTerm))
        .toStream()
        .to(args.get("long-term"), Produced.with(Serdes.String(), longTerm));

    // Recent: reviews younger than the window, aggregated per window; only the window ending
    // within the next day (the current one) is emitted, under the plain course key.
    byCourse
        .filter((courseId, review) ->
            created(review) + WINDOW.toMillis() >= System.currentTimeMillis())
        .groupByKey(byKey)
        .windowedBy(TimeWindows.ofSizeAndGrace(WINDOW, ADVANCE).advanceBy(ADVANCE))
        .aggregate(stats::empty, stats::add,
            Materialized.<String, GenericRecord, WindowStore<Bytes, byte[]>>as("recent-stats")
                .withKeySerde(Serdes.String()).withValueSerde(recent))
        .toStream()
        .filter((window, stat) -> isCurrent(window.window()))
        .selectKey((window, stat) -> window.key())
        .to(args.get("recent"), Produced.with(Serdes.String(), recent));
    return builder.build();
  }

  private static boolean isCurrent(Window window) {
    long now = System.currentTimeMillis();
    return window.end() > now && window.end() < now + ADVANCE.toMillis();
  }

  private static long created(GenericRecord review) {
    return (Long) review.get("created");
  }

  private static GenericRecord course(GenericRecord review) {
    return (GenericRecord) review.get("course");
  }

  /** The original's reviewAggregator over schemas/course_statistic.avsc. */
  static final class Statistics {
    /** Star buckets by rating * 2 / 2 (docs/contracts.md: 0.5 zero, 1.0/1.5 one, ..., 5.0 five). */
    private static final String[] BUCKETS = {
      "count_zero_star", "count_one_star", "count_two_stars",
      "count_three_stars", "count_four_stars", "count_five_stars",
    };

    private final Schema schema;

    Statistics(Schema schema) {
      this.schema = schema;
    }

    /** No reviews yet; the optional window and as-of fields stay null. */
    GenericRecord empty() {
      GenericRecord stat = new GenericData.Record(schema);
      stat.put("course_id", 0L);
      stat.put("course_title", "");
      stat.put("average_rating", 0.0);
      stat.put("count_reviews", 0L);
      for (String bucket : BUCKETS) {
        stat.put(bucket, 0L);
      }
      stat.put("last_review_time", 0L);
      stat.put("sum_rating", 0.0);
      return stat;
    }

    /** One more review: count, sum, average, its star bucket, the latest creation time. */
    GenericRecord add(String courseId, GenericRecord review, GenericRecord current) {
      // A shallow copy: the instance read from the store may still be forwarded as the old value.
      GenericData.Record stat = new GenericData.Record((GenericData.Record) current, false);
      GenericRecord course = course(review);
      stat.put("course_id", course.get("id"));
      stat.put("course_title", course.get("title"));
      double rating = Double.parseDouble(review.get("rating").toString());
      String bucket = BUCKETS[(int) Math.round(rating * 2) / 2];
      stat.put(bucket, (Long) stat.get(bucket) + 1);
      long count = (Long) stat.get("count_reviews") + 1;
      double sum = (Double) stat.get("sum_rating") + rating;
      stat.put("count_reviews", count);
      stat.put("sum_rating", sum);
      stat.put("average_rating", sum / count);
      stat.put("last_review_time", Math.max((Long) stat.get("last_review_time"), created(review)));
      return stat;
    }
  }
}
