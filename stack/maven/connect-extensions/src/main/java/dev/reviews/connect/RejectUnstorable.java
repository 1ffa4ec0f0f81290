/*
 * An SMT that fails a record a PostgreSQL sink could not store, so that Connect's error handling
 * (errors.tolerance=all) sends it to the dead-letter topic with the reason in its headers,
 * instead of the JDBC sink's task failing for good on the database's refusal (Debezium's JDBC
 * sink does not dead-letter failed writes). Unstorable: a string holding U+0000 (PostgreSQL text
 * cannot), a timestamp outside 0001-01-01 .. 9999-12-31 (what both PostgreSQL and Python store,
 * the pipeline's one rule), and a null value (a tombstone: the review topic carries no deletes,
 * and the sink would drop it unseen, where the reconciliation must count it as the stream
 * does). Nested structs are checked field by field; other records pass as they are.
 */
package dev.reviews.connect;

import java.util.Date;
import java.util.Map;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.data.Timestamp;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.transforms.Transformation;

public final class RejectUnstorable<R extends ConnectRecord<R>> implements Transformation<R> {
  static final long MIN_MS = -62_135_596_800_000L; // 0001-01-01T00:00:00Z
  static final long MAX_MS = 253_402_300_799_999L; // 9999-12-31T23:59:59.999Z

  @Override
  public R apply(R record) {
    if (record.value() == null) {
      throw new DataException("null value (tombstone): a review topic carries no deletes");
    }
    if (record.value() instanceof Struct value) {
      check(value, "");
    }
    return record;
  }

  static void check(Struct struct, String prefix) {
    for (Field field : struct.schema().fields()) {
      Object value = struct.get(field);
      String path = prefix + field.name();
      if (value instanceof String text && text.indexOf('\0') >= 0) {
        throw new DataException(path + " contains U+0000 (NUL), which PostgreSQL text cannot store");
      }
      if (value instanceof Date date && Timestamp.LOGICAL_NAME.equals(field.schema().name())) {
        long ms = date.getTime();
        if (ms < MIN_MS || ms > MAX_MS) {
          throw new DataException(
              path + " = " + ms + " ms is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z,"
                  + " what both PostgreSQL and Python store");
        }
      }
      if (value instanceof Struct nested && field.schema().type() == Schema.Type.STRUCT) {
        check(nested, path + ".");
      }
    }
  }

  @Override
  public ConfigDef config() {
    return new ConfigDef();
  }

  @Override
  public void configure(Map<String, ?> configs) {}

  @Override
  public void close() {}
}
