package reviews.bench.kstreams;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.ForeachAction;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The aggregator with our semantics (docs/semantics.md), written the way a Kafka Streams engineer
 * writes the exact version: a KTable of current versions, grouped by course, aggregated with an
 * adder and a subtractor.
 *
 * <pre>
 * valid, fraud --processValues--> Version, merged
 *   current = groupByKey.reduce(greatest (modified, position))      store: current-versions
 *   stats   = current.filter(valid).groupBy(course).aggregate(+, -)  store: course-stats
 *   titles  = versions.groupBy(course).reduce(max (modified, title)) store: course-titles
 *   titles.leftJoin(stats) --> long-term-stats, recent-stats
 * </pre>
 *
 * <p>A flip to fraud makes the filter emit a tombstone, so the subtractor retracts the review; an
 * edit or a move is a subtraction from the old course and an addition to the new one. Every
 * record offers its course title (stale and fraud ones too), as the reference does, and every
 * course of any record gets a statistic (zero statistics when nothing is counted).
 *
 * <p>Recent: created on the UTC days D-89 .. D, D the day the app started. The window does not
 * move during a run (a run lasts seconds; a long-running app would need a punctuator that
 * re-aggregates when the day changes, which the DSL has no place for).
 *
 * <p>last_review_time: a subtractor cannot lower a maximum, and serializing every counted
 * review per update would cost O(reviews) per record, so the aggregate keeps the {@link
 * Latest#K} greatest created times of its counted reviews. That is exact unless more than K of a
 * course's latest reviews are retracted without newer ones arriving (then the time reads 0 or
 * too old until enough newer reviews arrive).
 */
final class KTableAggregateApp {
  static final String POSITION_HEADER = "source.position";
  static final int RECENT_DAYS = 90;
  static final long MS_PER_DAY = 86_400_000L;

  private KTableAggregateApp() {}

  static Topology topology(Args args) throws IOException {
    ConfluentAvroSerde reviews =
        new ConfluentAvroSerde(args.schema("review-schema"), args.integer("review-schema-id"));
    Schema statSchema = args.schema("stat-schema");
    ConfluentAvroSerde longTerm =
        new ConfluentAvroSerde(statSchema, args.integer("long-term-schema-id"));
    ConfluentAvroSerde recent =
        new ConfluentAvroSerde(statSchema, args.integer("recent-schema-id"));
    long today = Math.floorDiv(System.currentTimeMillis(), MS_PER_DAY);
    Window window = new Window(today - RECENT_DAYS + 1, today);
    Serde<Version> versionSerde = Version.serde();
    Serde<CourseStats> statsSerde = CourseStats.serde();
    ForeachAction<String, GenericRecord> first = Main.firstRecord();

    StreamsBuilder builder = new StreamsBuilder();
    KStream<String, Version> valid = builder
        .stream(args.get("valid"), Consumed.with(Serdes.String(), reviews))
        .peek(first)
        .processValues(() -> new ToVersion(true));
    KStream<String, Version> fraud = builder
        .stream(args.get("fraud"), Consumed.with(Serdes.String(), reviews))
        .peek(first)
        .processValues(() -> new ToVersion(false));
    KStream<String, Version> versions = valid.merge(fraud);

    KTable<String, Version> current = versions
        .groupByKey(Grouped.with(Serdes.String(), versionSerde))
        .reduce((stored, incoming) -> incoming.supersedes(stored) ? incoming : stored,
            Materialized.<String, Version, KeyValueStore<Bytes, byte[]>>as("current-versions")
                .withKeySerde(Serdes.String()).withValueSerde(versionSerde));

    KTable<Long, CourseStats> stats = current
        .filter((reviewId, version) -> version.valid())
        .groupBy((reviewId, version) -> KeyValue.pair(version.course(), version),
            Grouped.with("counted", Serdes.Long(), versionSerde))
        .aggregate(CourseStats::new,
            (course, version, agg) -> agg.add(version, window),
            (course, version, agg) -> agg.subtract(version, window),
            Materialized.<Long, CourseStats, KeyValueStore<Bytes, byte[]>>as("course-stats")
                .withKeySerde(Serdes.Long()).withValueSerde(statsSerde));

    KTable<Long, Version> titles = versions
        .groupBy((reviewId, version) -> version.course(),
            Grouped.with("titles", Serdes.Long(), versionSerde))
        .reduce((stored, incoming) -> incoming.titleBeats(stored) ? incoming : stored,
            Materialized.<Long, Version, KeyValueStore<Bytes, byte[]>>as("course-titles")
                .withKeySerde(Serdes.Long()).withValueSerde(versionSerde));

    Statistics out = new Statistics(statSchema, window);
    KStream<String, Published> published = titles
        .leftJoin(stats, Published::new)
        .toStream((course, stat) -> course.toString());
    published.mapValues(out::allTime)
        .to(args.get("long-term"), Produced.with(Serdes.String(), longTerm));
    published.mapValues(out::recent)
        .to(args.get("recent"), Produced.with(Serdes.String(), recent));
    return builder.build();
  }

  /** The recent window: UTC days first .. last, both included. */
  record Window(long first, long last) {
    boolean contains(long createdMs) {
      long day = Math.floorDiv(createdMs, MS_PER_DAY);
      return first <= day && day <= last;
    }
  }

  /** A review record reduced to a Version; the verdict is the topic it came from. */
  static final class ToVersion implements FixedKeyProcessor<String, GenericRecord, Version> {
    private final boolean valid;
    private FixedKeyProcessorContext<String, Version> context;

    ToVersion(boolean valid) {
      this.valid = valid;
    }

    @Override
    public void init(FixedKeyProcessorContext<String, Version> context) {
      this.context = context;
    }

    @Override
    public void process(FixedKeyRecord<String, GenericRecord> record) {
      context.forward(record.withValue(Version.of(record.value(), position(record.headers()),
          valid)));
    }

    /** The offset in udemy-reviews the fraud filter's header carries (int32 partition, int64
     * offset, big-endian); a record without it cannot be ordered, so it fails the app. */
    private static long position(Headers headers) {
      Header header = headers.lastHeader(POSITION_HEADER);
      if (header == null || header.value() == null || header.value().length != 12) {
        throw new IllegalArgumentException("a record without a 12-byte " + POSITION_HEADER);
      }
      return ByteBuffer.wrap(header.value()).getLong(4);
    }
  }

  /** One version of a review, as much of it as counting, retracting and titles need. */
  record Version(long course, long modified, long position, long created, int halves,
      boolean valid, byte[] title) {

    static Version of(GenericRecord review, long position, boolean valid) {
      GenericRecord course = (GenericRecord) review.get("course");
      double rating = Double.parseDouble(review.get("rating").toString());
      return new Version((Long) course.get("id"), (Long) review.get("modified"), position,
          (Long) review.get("created"), (int) Math.round(rating * 2), valid,
          course.get("title").toString().getBytes(StandardCharsets.UTF_8));
    }

    /** The greatest (modified, position) is the current version; a stale one loses. */
    boolean supersedes(Version stored) {
      return modified != stored.modified ? modified > stored.modified : position > stored.position;
    }

    /** The greatest (modified, title), titles compared by code point (UTF-8 bytes unsigned). */
    boolean titleBeats(Version stored) {
      return modified != stored.modified
          ? modified > stored.modified
          : Arrays.compareUnsigned(title, stored.title) > 0;
    }

    /** 4 longs, halves, verdict, title length and UTF-8 bytes. */
    static Serde<Version> serde() {
      return Serdes.serdeFrom(
          (topic, v) -> v == null ? null : ByteBuffer.allocate(36 + v.title.length)
              .putLong(v.course).putLong(v.modified).putLong(v.position).putLong(v.created)
              .put((byte) v.halves).put((byte) (v.valid ? 1 : 0))
              .putShort((short) v.title.length).put(v.title).array(),
          (topic, data) -> {
            if (data == null) {
              return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            long course = b.getLong();
            long modified = b.getLong();
            long position = b.getLong();
            long created = b.getLong();
            int halves = b.get();
            boolean valid = b.get() == 1;
            byte[] title = new byte[Short.toUnsignedInt(b.getShort())];
            b.get(title);
            return new Version(course, modified, position, created, halves, valid, title);
          });
    }
  }

  /**
   * The K greatest created times of a course's counted reviews, ascending. Invariant: every
   * counted review not in the list is no later than its smallest entry, so its last entry is the
   * latest review as long as the list is not empty. Immutable: a store's old value may still be
   * forwarded.
   */
  record Latest(long[] times) {
    static final int K = 16;
    static final Latest NONE = new Latest(new long[0]);

    /** With a review created at t counted, `countBefore` reviews counted before it. */
    Latest added(long t, long countBefore) {
      boolean complete = times.length == countBefore;
      if (times.length < K && (complete || (times.length > 0 && t > times[0]))) {
        return new Latest(insert(times, t));
      }
      if (times.length == K && t > times[0]) {
        return new Latest(insert(Arrays.copyOfRange(times, 1, K), t));
      }
      return this;
    }

    /** Without one review created at t (nothing changes when t is below the list). */
    Latest removed(long t) {
      int i = Arrays.binarySearch(times, t);
      if (i < 0) {
        return this;
      }
      long[] out = new long[times.length - 1];
      System.arraycopy(times, 0, out, 0, i);
      System.arraycopy(times, i + 1, out, i, times.length - i - 1);
      return new Latest(out);
    }

    long last() {
      return times.length == 0 ? 0 : times[times.length - 1];
    }

    private static long[] insert(long[] sorted, long t) {
      int i = Arrays.binarySearch(sorted, t);
      int at = i < 0 ? -i - 1 : i;
      long[] out = new long[sorted.length + 1];
      System.arraycopy(sorted, 0, out, 0, at);
      out[at] = t;
      System.arraycopy(sorted, at, out, at + 1, sorted.length - at);
      return out;
    }
  }

  /** A course's all-time and recent histograms by halves (1..10) and their latest reviews. */
  record CourseStats(long[] total, long[] recent, Latest latest, Latest recentLatest) {
    CourseStats() {
      this(new long[11], new long[11], Latest.NONE, Latest.NONE);
    }

    CourseStats add(Version v, Window window) {
      return change(v, window, 1);
    }

    CourseStats subtract(Version v, Window window) {
      return change(v, window, -1);
    }

    private CourseStats change(Version v, Window window, int sign) {
      long[] t = total.clone();
      long[] r = recent;
      Latest l = sign > 0 ? latest.added(v.created(), count(total)) : latest.removed(v.created());
      Latest rl = recentLatest;
      t[v.halves()] += sign;
      if (window.contains(v.created())) {
        r = recent.clone();
        r[v.halves()] += sign;
        rl = sign > 0 ? rl.added(v.created(), count(recent)) : rl.removed(v.created());
      }
      return new CourseStats(t, r, l, rl);
    }

    static long count(long[] histogram) {
      long n = 0;
      for (long c : histogram) {
        n += c;
      }
      return n;
    }

    /** Varint-free but compact: 2 x 10 ints (halves 1..10), then each list's length and times. */
    static Serde<CourseStats> serde() {
      return Serdes.serdeFrom(
          (topic, s) -> {
            if (s == null) {
              return null;
            }
            ByteBuffer b = ByteBuffer.allocate(
                80 + 2 + 8 * (s.latest.times().length + s.recentLatest.times().length));
            for (long[] h : new long[][] {s.total, s.recent}) {
              for (int i = 1; i <= 10; i++) {
                b.putInt((int) h[i]);
              }
            }
            for (Latest l : new Latest[] {s.latest, s.recentLatest}) {
              b.put((byte) l.times().length);
              for (long t : l.times()) {
                b.putLong(t);
              }
            }
            return b.array();
          },
          (topic, data) -> {
            if (data == null) {
              return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            long[][] h = {new long[11], new long[11]};
            for (long[] histogram : h) {
              for (int i = 1; i <= 10; i++) {
                histogram[i] = b.getInt();
              }
            }
            Latest[] l = new Latest[2];
            for (int j = 0; j < 2; j++) {
              long[] times = new long[b.get()];
              for (int i = 0; i < times.length; i++) {
                times[i] = b.getLong();
              }
              l[j] = new Latest(times);
            }
            return new CourseStats(h[0], h[1], l[0], l[1]);
          });
    }
  }

  /** A course's title (the winning version) and its statistics, null when nothing counts. */
  record Published(Version title, CourseStats stats) {}

  /** Published -> schemas/course_statistic.avsc, all-time or recent. */
  static final class Statistics {
    private static final CourseStats ZERO = new CourseStats();
    private final Schema schema;
    private final Window window;

    Statistics(Schema schema, Window window) {
      this.schema = schema;
      this.window = window;
    }

    GenericRecord allTime(Published p) {
      CourseStats s = p.stats() == null ? ZERO : p.stats();
      return record(p.title(), s.total(), s.latest(), null, null);
    }

    GenericRecord recent(Published p) {
      CourseStats s = p.stats() == null ? ZERO : p.stats();
      return record(p.title(), s.recent(), s.recentLatest(), (int) window.first(),
          (int) window.last());
    }

    private GenericRecord record(Version title, long[] h, Latest latest, Integer start,
        Integer end) {
      long count = CourseStats.count(h);
      long halves = 0;
      for (int i = 1; i <= 10; i++) {
        halves += i * h[i];
      }
      double sum = halves / 2.0;
      GenericRecord stat = new GenericData.Record(schema);
      stat.put("course_id", title.course());
      stat.put("course_title", new String(title.title(), StandardCharsets.UTF_8));
      stat.put("average_rating", count == 0 ? 0.0 : sum / count);
      stat.put("count_reviews", count);
      stat.put("count_five_stars", h[10]);
      stat.put("count_four_stars", h[8] + h[9]);
      stat.put("count_three_stars", h[6] + h[7]);
      stat.put("count_two_stars", h[4] + h[5]);
      stat.put("count_one_star", h[2] + h[3]);
      stat.put("count_zero_star", h[1]);
      stat.put("last_review_time", count == 0 ? 0L : latest.last());
      stat.put("sum_rating", sum);
      stat.put("window_start_day", start);
      stat.put("window_end_day", end);
      stat.put("as_of_time", System.currentTimeMillis());
      return stat;
    }
  }
}
