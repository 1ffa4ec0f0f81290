package reviews.bench.kstreams;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.ForeachAction;

/**
 * The Kafka Streams peer of the benchmarks: {@code fraud}, {@code aggregate} (the original
 * topology) or {@code aggregate-ktable} (our semantics as a KTable aggregation), then
 * {@code --name value} options (see bench/peers/kstreams.py for the full command lines); and
 * {@code legacy-produce}, the original pipeline's keyless producer (the tests' legacy writer).
 * Runs until SIGTERM; exits 1 if the topology fails.
 */
public final class Main {
  private Main() {}

  public static void main(String[] argv) throws Exception {
    String mode = argv.length == 0 ? "" : argv[0];
    if (mode.equals("legacy-produce")) {
      LegacyProducer.run(new Args(argv, 1));
      return;
    }
    if (!(mode.equals("fraud") || mode.equals("aggregate") || mode.equals("aggregate-ktable"))) {
      System.err.println(
          "usage: (fraud | aggregate | aggregate-ktable | legacy-produce) --name value ...");
      System.exit(2);
    }
    Args args = new Args(argv, 1);
    run(topology(mode, args), config(args));
  }

  private static Topology topology(String mode, Args args) throws java.io.IOException {
    return switch (mode) {
      case "fraud" -> FraudApp.topology(args);
      case "aggregate" -> AggregateApp.topology(args);
      default -> KTableAggregateApp.topology(args);
    };
  }

  /**
   * Exactly-once v2 on one stream thread. Client settings mirror our Python workers
   * (streaming/workers/eos.py) where Streams has an equivalent; everything else is Streams'
   * default.
   */
  static Properties config(Args args) throws java.io.IOException {
    Properties p = args.clientProperties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("application-id"));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
    p.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    // KIP-892 (Kafka 4.4): stores stage their writes until the changelog transaction commits,
    // so an unclean EOS shutdown no longer wipes the state: what a team deploys on 4.4 today.
    p.put(StreamsConfig.TRANSACTIONAL_STATE_STORES_CONFIG, true);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    // Ours commit every 100 ms (or 20,000 records); 100 ms is also Streams' EOS default.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
    // earliest for the throughput runs (fresh topics); the latency run starts on a live input
    // at its end (--offset-reset latest), as a new deployment of the pipeline would
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG),
        args.get("offset-reset", "earliest"));
    // Ours consume batches of 5,000 (Streams default 1,000) with these fetch sizes.
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), 5_000);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_BYTES_CONFIG), 52_428_800);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG), 4_194_304);
    // Ours: linger 5 ms (Streams default 100), batches up to 1 MB, 60 s transaction timeout.
    p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 1_000_000);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG), 60_000);
    return p;
  }

  /** A peek that prints {@code FIRST <epoch_ms>} once, when the first record goes through. */
  static <K, V> ForeachAction<K, V> firstRecord() {
    AtomicBoolean seen = new AtomicBoolean();
    return (key, value) -> {
      if (!seen.getAndSet(true)) {
        System.out.println("FIRST " + System.currentTimeMillis());
        System.out.flush();
      }
    };
  }

  private static void run(Topology topology, Properties config) throws InterruptedException {
    KafkaStreams streams = new KafkaStreams(topology, config);
    CountDownLatch stopped = new CountDownLatch(1);
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
        stopped.countDown();
      }
    });
    // A failure stops the client, so the harness sees the process exit instead of a stall.
    streams.setUncaughtExceptionHandler(e -> {
      e.printStackTrace();
      return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    // SIGTERM from the harness: commit what was processed and leave the group, so the driver
    // can delete it at once (Streams otherwise stays a member until the session times out).
    Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(
        CloseOptions.groupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP)
            .withTimeout(Duration.ofSeconds(15)))));
    streams.start();
    stopped.await();
    if (streams.state() == KafkaStreams.State.ERROR) {
      System.exit(1);
    }
  }
}
