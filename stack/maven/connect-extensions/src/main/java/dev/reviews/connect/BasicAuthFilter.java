/*
 * The request filter behind BasicAuthRestExtension: every request needs a known user and its
 * password, compared in constant time, except Connect's two internal endpoints, which workers
 * call on each other and which Connect itself authenticates with the cluster's session key
 * (KIP-507), as Kafka's own basic-auth extension also lets them through.
 */
package dev.reviews.connect;

import jakarta.ws.rs.container.ContainerRequestContext;
import jakarta.ws.rs.container.ContainerRequestFilter;
import jakarta.ws.rs.core.HttpHeaders;
import jakarta.ws.rs.core.MediaType;
import jakarta.ws.rs.core.Response;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Base64;
import java.util.Map;
import java.util.regex.Pattern;

final class BasicAuthFilter implements ContainerRequestFilter {
  private static final Pattern INTERNAL_TASKS = Pattern.compile("^/?connectors/[^/]+/tasks/?$");
  private static final Pattern INTERNAL_FENCE = Pattern.compile("^/?connectors/[^/]+/fence/?$");

  private final Map<String, byte[]> users;

  BasicAuthFilter(Map<String, byte[]> users) {
    this.users = users;
  }

  @Override
  public void filter(ContainerRequestContext request) {
    if (isInternal(request.getMethod(), request.getUriInfo().getPath())) {
      return;
    }
    if (!authorised(request.getHeaderString(HttpHeaders.AUTHORIZATION))) {
      request.abortWith(
          Response.status(Response.Status.UNAUTHORIZED)
              .header(HttpHeaders.WWW_AUTHENTICATE, "Basic realm=\"kafka-connect\"")
              .type(MediaType.APPLICATION_JSON)
              .entity("{\"error_code\":401,\"message\":\"credentials required (HTTP Basic)\"}")
              .build());
    }
  }

  static boolean isInternal(String method, String path) {
    return ("POST".equals(method) && INTERNAL_TASKS.matcher(path).matches())
        || ("PUT".equals(method) && INTERNAL_FENCE.matcher(path).matches());
  }

  boolean authorised(String header) {
    if (header == null || !header.regionMatches(true, 0, "Basic ", 0, 6)) {
      return false;
    }
    String decoded;
    try {
      decoded = new String(Base64.getDecoder().decode(header.substring(6).trim()), StandardCharsets.UTF_8);
    } catch (IllegalArgumentException e) {
      return false;
    }
    int colon = decoded.indexOf(':');
    if (colon < 0) {
      return false;
    }
    byte[] expected = users.get(decoded.substring(0, colon));
    byte[] given = decoded.substring(colon + 1).getBytes(StandardCharsets.UTF_8);
    return expected != null && MessageDigest.isEqual(expected, given);
  }
}
