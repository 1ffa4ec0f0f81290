package reviews.bench.kstreams;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;

/**
 * Avro GenericRecords in the Confluent wire format: magic byte 0, 4-byte big-endian schema id,
 * Avro binary body.
 *
 * <p>The original app used Confluent's SpecificAvroSerde, which looks the writer schema up in the
 * registry by the id in each record. This peer is given its one schema and that schema's id
 * instead (the benchmark input is written with exactly that schema), so it needs no registry
 * client; a record naming another id is refused rather than decoded with the wrong schema.
 */
final class ConfluentAvroSerde implements Serde<GenericRecord> {
  private static final byte MAGIC = 0;
  private static final int HEADER = 5;

  private final Schema schema;
  private final int schemaId;
  private final GenericDatumReader<GenericRecord> reader;
  private final GenericDatumWriter<GenericRecord> writer;

  ConfluentAvroSerde(Schema schema, int schemaId) {
    this.schema = schema;
    this.schemaId = schemaId;
    this.reader = new GenericDatumReader<>(schema);
    this.writer = new GenericDatumWriter<>(schema);
  }

  @Override
  public Serializer<GenericRecord> serializer() {
    return (topic, record) -> {
      if (record == null) {
        return null;
      }
      ByteArrayOutputStream out = new ByteArrayOutputStream(256);
      out.write(MAGIC);
      out.writeBytes(ByteBuffer.allocate(4).putInt(schemaId).array());
      BinaryEncoder encoder = EncoderFactory.get().directBinaryEncoder(out, null);
      try {
        writer.write(record, encoder);
      } catch (IOException | RuntimeException e) {
        throw new SerializationException(
            "cannot encode a " + schema.getName() + " for " + topic, e);
      }
      return out.toByteArray();
    };
  }

  @Override
  public Deserializer<GenericRecord> deserializer() {
    return (topic, data) -> {
      if (data == null) {
        return null;
      }
      ByteBuffer header = ByteBuffer.wrap(data);
      if (data.length < HEADER || header.get() != MAGIC) {
        throw new SerializationException("not in the Confluent wire format (" + topic + ")");
      }
      int id = header.getInt();
      if (id != schemaId) {
        throw new SerializationException(
            "schema id " + id + " in " + topic + ", this peer only knows " + schemaId);
      }
      try {
        return reader.read(
            null, DecoderFactory.get().binaryDecoder(data, HEADER, data.length - HEADER, null));
      } catch (IOException | RuntimeException e) {
        throw new SerializationException(
            "cannot decode a " + schema.getName() + " from " + topic, e);
      }
    };
  }
}
