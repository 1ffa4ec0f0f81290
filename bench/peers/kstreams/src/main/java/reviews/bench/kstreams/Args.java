package reviews.bench.kstreams;

import java.io.File;
import java.io.IOException;
import java.util.HashMap;
import java.util.Map;
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

  int integer(String name) {
    return Integer.parseInt(get(name));
  }

  Schema schema(String name) throws IOException {
    return new Schema.Parser().parse(new File(get(name)));
  }
}
