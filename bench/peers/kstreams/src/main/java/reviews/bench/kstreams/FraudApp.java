package reviews.bench.kstreams;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/**
 * The original fraud app: reviews -> valid / fraud by a hash of the review's Avro bytes. With
 * {@code --position-header true} each record also carries its position in the input (the
 * {@code source.position} header ours adds), which the KTable aggregator orders versions by, and
 * with {@code --key-by-id true} it is keyed by the review's id: the latency run chains the two
 * apps as ours chains its fraud filter and aggregator, on the same keyless and keyed input.
 */
final class FraudApp {
  private FraudApp() {}

  static Topology topology(Args args) throws IOException {
    Schema schema = args.schema("review-schema");
    ConfluentAvroSerde reviews = new ConfluentAvroSerde(schema, args.integer("review-schema-id"));
    Produced<String, GenericRecord> out = Produced.with(Serdes.String(), reviews);
    HashRule rule = new HashRule(schema);

    // The original also logged every record from a peek on each branch; left out, as it would
    // time the logger rather than the topology.
    StreamsBuilder builder = new StreamsBuilder();
    KStream<String, GenericRecord> input = builder
        .stream(args.get("input"), Consumed.with(Serdes.String(), reviews))
        .peek(Main.firstRecord());
    if (Boolean.parseBoolean(args.get("position-header", "false"))) {
      input = input.processValues(AddPosition::new);
    }
    if (Boolean.parseBoolean(args.get("key-by-id", "false"))) {
      // another producer may send no key (the original one): key each copy by the review's
      // id, as ours does, or the aggregator's groupByKey would drop it
      input = input.selectKey((key, review) -> review.get("id").toString());
    }
    input
        .split()
        .branch((key, review) -> !rule.isFraud(review),
            Branched.withConsumer(valid -> valid.to(args.get("valid"), out)))
        .defaultBranch(Branched.withConsumer(fraud -> fraud.to(args.get("fraud"), out)));
    return builder.build();
  }

  /** Adds the record's (partition, offset) as the 12-byte {@code source.position} header. */
  static final class AddPosition
      implements FixedKeyProcessor<String, GenericRecord, GenericRecord> {
    private FixedKeyProcessorContext<String, GenericRecord> context;

    @Override
    public void init(FixedKeyProcessorContext<String, GenericRecord> context) {
      this.context = context;
    }

    @Override
    public void process(FixedKeyRecord<String, GenericRecord> record) {
      RecordMetadata at = context.recordMetadata().orElseThrow();
      byte[] position = ByteBuffer.allocate(12).putInt(at.partition()).putLong(at.offset()).array();
      record.headers().add(KTableAggregateApp.POSITION_HEADER, position);
      context.forward(record);
    }
  }

  /**
   * {@code toPositive(murmur2(single-object encoding)) % 100 < 5}: the original called
   * {@code review.toByteBuffer()} on its generated SpecificRecord, which is Avro's single-object
   * encoding (C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
   * Canonical Form, the Avro binary body). Built here from a GenericRecord, same bytes.
   */
  static final class HashRule {
    private final byte[] prefix;
    private final GenericDatumWriter<GenericRecord> writer;

    HashRule(Schema schema) {
      prefix = ByteBuffer.allocate(10).order(ByteOrder.LITTLE_ENDIAN)
          .put((byte) 0xC3).put((byte) 0x01)
          .putLong(SchemaNormalization.parsingFingerprint64(schema))
          .array();
      writer = new GenericDatumWriter<>(schema);
    }

    boolean isFraud(GenericRecord review) {
      ByteArrayOutputStream bytes = new ByteArrayOutputStream(256);
      bytes.writeBytes(prefix);
      BinaryEncoder encoder = EncoderFactory.get().directBinaryEncoder(bytes, null);
      try {
        writer.write(review, encoder);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      return Utils.toPositive(Utils.murmur2(bytes.toByteArray())) % 100 < 5;
    }
  }
}
