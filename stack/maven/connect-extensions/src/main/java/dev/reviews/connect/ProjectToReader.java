/*
 * An SMT that reads each record as the pipeline's reader schema does: the value keeps only the
 * fields the reader names (nested records too), in the reader's order, so a record of a later
 * writer schema (an added field anywhere, a dropped optional one) reaches the JDBC sink with the
 * columns the reader knows, and the table never has to change under the sink. A field the
 * reader names that the record lacks (a dropped field with a default) stays absent: its column
 * is nullable and the default of every optional field of the reader is null, which the sink
 * writes. This is Avro schema resolution applied to Connect's structs, what the stream does to
 * every record of another writer schema.
 *
 * Configuration: `fields`, the reader's field tree, e.g. "id,title,user{name,display_name}";
 * rendered from schemas/review.avsc (streaming/sink/render.py), never typed by hand.
 */
package dev.reviews.connect;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.transforms.Transformation;

public final class ProjectToReader<R extends ConnectRecord<R>> implements Transformation<R> {
  static final String FIELDS = "fields";
  private Map<String, Object> reader = Map.of();
  private final Map<Schema, Schema> projected = new ConcurrentHashMap<>();

  /** "a,b{c,d},e" as name -> null (a leaf) or the nested tree, in order. */
  static Map<String, Object> parse(String spec) {
    int[] at = {0};
    Map<String, Object> tree = parseLevel(spec, at);
    if (at[0] != spec.length()) {
      throw new IllegalArgumentException("unbalanced '}' at " + at[0] + " in " + spec);
    }
    return tree;
  }

  private static Map<String, Object> parseLevel(String spec, int[] at) {
    Map<String, Object> level = new LinkedHashMap<>();
    StringBuilder name = new StringBuilder();
    while (at[0] < spec.length()) {
      char c = spec.charAt(at[0]++);
      if (c == '{') {
        level.put(name.toString().trim(), parseLevel(spec, at));
        name.setLength(0);
      } else if (c == '}') {
        break;
      } else if (c == ',') {
        if (!name.toString().isBlank()) {
          level.put(name.toString().trim(), null);
        }
        name.setLength(0);
      } else {
        name.append(c);
      }
    }
    if (!name.toString().isBlank()) {
      level.put(name.toString().trim(), null);
    }
    return level;
  }

  @SuppressWarnings("unchecked")
  static Schema project(Schema schema, Map<String, Object> tree) {
    SchemaBuilder builder = SchemaBuilder.struct().name(schema.name()).version(schema.version());
    if (schema.isOptional()) {
      builder.optional();
    }
    for (Map.Entry<String, Object> wanted : tree.entrySet()) {
      Field field = schema.field(wanted.getKey());
      if (field == null) {
        continue; // a field the writer dropped: its column stays null, the reader's default
      }
      Schema fieldSchema = field.schema();
      if (wanted.getValue() instanceof Map<?, ?> nested) {
        if (fieldSchema.type() != Schema.Type.STRUCT) {
          throw new DataException(field.name() + " is not a record in the writer schema");
        }
        fieldSchema = project(fieldSchema, (Map<String, Object>) nested);
      }
      builder.field(field.name(), fieldSchema);
    }
    return builder.build();
  }

  static Struct copy(Struct from, Schema to) {
    Struct out = new Struct(to);
    for (Field field : to.fields()) {
      Object value = from.get(field.name());
      if (value instanceof Struct nested && field.schema().type() == Schema.Type.STRUCT) {
        value = copy(nested, field.schema());
      }
      out.put(field, value);
    }
    return out;
  }

  @Override
  public R apply(R record) {
    if (!(record.value() instanceof Struct value)) {
      return record;
    }
    Schema target = projected.computeIfAbsent(value.schema(), s -> project(s, reader));
    return record.newRecord(
        record.topic(),
        record.kafkaPartition(),
        record.keySchema(),
        record.key(),
        target,
        copy(value, target),
        record.timestamp(),
        record.headers());
  }

  @Override
  public ConfigDef config() {
    return new ConfigDef()
        .define(
            FIELDS,
            ConfigDef.Type.STRING,
            ConfigDef.NO_DEFAULT_VALUE,
            ConfigDef.Importance.HIGH,
            "The reader schema's field tree, e.g. \"id,title,user{name,display_name}\".");
  }

  @Override
  public void configure(Map<String, ?> configs) {
    Object spec = configs.get(FIELDS);
    if (spec == null || spec.toString().isBlank()) {
      throw new org.apache.kafka.common.config.ConfigException(FIELDS, spec, "the reader's fields");
    }
    reader = parse(spec.toString());
  }

  @Override
  public void close() {}
}
