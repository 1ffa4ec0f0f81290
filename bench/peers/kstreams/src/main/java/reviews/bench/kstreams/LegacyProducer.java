package reviews.bench.kstreams;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serializer;

/**
 * The original pipeline's producer, as a migrating team still runs it: every review sent with
 * <b>no key</b> ({@code new ProducerRecord<>(topic, review)}), its value Avro in the Confluent
 * wire format, with the Java client's defaults (so keyless records spread over the partitions).
 * Reads Review records in Avro's JSON encoding, one per line ({@code --input}), sends them one
 * after another and prints {@code SENT <partition> <offset>} for each, in order.
 */
final class LegacyProducer {
  private LegacyProducer() {}

  static void run(Args args) throws Exception {
    Schema schema = args.schema("schema");
    Serializer<GenericRecord> values =
        new ConfluentAvroSerde(schema, args.integer("schema-id")).serializer();
    Properties config = args.clientProperties();
    config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
    config.put(ProducerConfig.ACKS_CONFIG, "all");
    // The keyless (sticky) partitioner moves to another partition every batch.size bytes: small
    // batches make a short test's reviews land on several partitions, as a long run's do.
    config.put(ProducerConfig.BATCH_SIZE_CONFIG, 1024);
    String topic = args.get("topic");
    GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
    try (KafkaProducer<byte[], byte[]> producer =
            new KafkaProducer<>(config, new ByteArraySerializer(), new ByteArraySerializer());
        BufferedReader lines =
            Files.newBufferedReader(Path.of(args.get("input")), StandardCharsets.UTF_8)) {
      String line;
      while ((line = lines.readLine()) != null) {
        GenericRecord review = reader.read(null, DecoderFactory.get().jsonDecoder(schema, line));
        ProducerRecord<byte[], byte[]> record =
            new ProducerRecord<>(topic, values.serialize(topic, review));
        RecordMetadata sent = producer.send(record).get();
        System.out.println("SENT " + sent.partition() + " " + sent.offset());
      }
    } catch (IOException e) {
      throw new IOException("cannot read " + args.get("input") + ": " + e.getMessage(), e);
    }
  }
}
