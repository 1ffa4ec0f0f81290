package reviews.bench.kstreams;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;

/** {@code --name value} options; a missing one is an error naming it. */
final class Args {
  private final Map<String, String> values = new HashMap<>();

  Args(String[] argv, int from) {
    for (int i = from; i < argv.length; i += 2) {
      if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
        throw new IllegalArgumentException("expected --name value pairs, got " + argv[i]);
      }
      values.put(argv[i].substring(2), argv[i + 1]);
    }
  }

  String get(String name) {
    String value = values.get(name);
    if (value == null) {
      throw new IllegalArgumentException("missing --" + name);
    }
    return value;
  }

  /** The value of an optional {@code --name}, or {@code fallback} without it. */
  String get(String name, String fallback) {
    return values.getOrDefault(name, fallback);
  }

  int integer(String name) {
    return Integer.parseInt(get(name));
  }

  Schema schema(String name) throws IOException {
    return new Schema.Parser().parse(new File(get(name)));
  }

  /**
   * The client settings of {@code --client-properties FILE} (the cluster's login: security
   * protocol, SASL mechanism and JAAS config, as {@code stack/kafka_client_security.py} writes
   * them), none without it.
   */
  Properties clientProperties() throws IOException {
    Properties p = new Properties();
    String path = values.get("client-properties");
    if (path != null) {
      try (InputStream in = Files.newInputStream(Path.of(path))) {
        p.load(in);
      }
    }
    return p;
  }
}
