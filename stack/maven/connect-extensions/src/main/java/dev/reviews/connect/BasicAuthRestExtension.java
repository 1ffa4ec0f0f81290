/*
 * HTTP Basic auth for Kafka Connect's REST API, so that a local user without the password can
 * neither read nor re-point the connectors. Registered by the worker's
 * rest.extension.classes; its one setting, reviews.rest.auth.users.file, names a properties
 * file of user=password lines, read once when the worker starts.
 */
package dev.reviews.connect;

import jakarta.ws.rs.Priorities;
import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.connect.rest.ConnectRestExtension;
import org.apache.kafka.connect.rest.ConnectRestExtensionContext;

public final class BasicAuthRestExtension implements ConnectRestExtension {
  public static final String USERS_FILE_CONFIG = "reviews.rest.auth.users.file";

  private Map<String, byte[]> users = Map.of();

  @Override
  public void configure(Map<String, ?> configs) {
    Object file = configs.get(USERS_FILE_CONFIG);
    if (file == null || file.toString().isBlank()) {
      throw new ConfigException(USERS_FILE_CONFIG + " is not set: the REST API would be open");
    }
    users = load(Path.of(file.toString()));
    if (users.isEmpty()) {
      throw new ConfigException(USERS_FILE_CONFIG + " names a file with no user: " + file);
    }
  }

  static Map<String, byte[]> load(Path file) {
    Properties props = new Properties();
    try (Reader in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
      props.load(in);
    } catch (IOException e) {
      throw new ConfigException(USERS_FILE_CONFIG + " cannot be read: " + file + " (" + e + ")");
    }
    Map<String, byte[]> out = new HashMap<>();
    props.forEach((user, pw) -> out.put((String) user, ((String) pw).getBytes(StandardCharsets.UTF_8)));
    return Map.copyOf(out);
  }

  @Override
  public void register(ConnectRestExtensionContext context) {
    // first of the request filters: nothing runs before the credentials are checked
    context.configurable().register(new BasicAuthFilter(users), Priorities.AUTHENTICATION);
  }

  @Override
  public void close() {}

  @Override
  public String version() {
    return "1";
  }
}
