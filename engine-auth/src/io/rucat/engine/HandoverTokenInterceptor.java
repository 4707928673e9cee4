package io.rucat.engine;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;

import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;

/**
 * The token check of a Rucat engine's Spark Connect server, in place of Spark's own pre-shared
 * key check, with one addition: the token can be replaced at run time (the handover of a warm
 * engine to its user).
 *
 * <p>Loaded by {@code --conf spark.connect.grpc.interceptor.classes=io.rucat.engine.HandoverTokenInterceptor};
 * Spark creates one instance, through the public no-argument constructor, when the server starts.
 * The first token comes from the environment variable {@code RUCAT_ENGINE_TOKEN}; without one,
 * every call is refused.
 *
 * <p>Every call must carry {@code authorization: Bearer <token>}. A call that also carries
 * {@code x-rucat-rekey: <new token>} replaces the token: if its token is the current one, the
 * new token becomes current and the old one is kept only to let a second caller of the same
 * handover through (its token is the old one and its new token the current one). From then on
 * the old token alone, or with any other new token, is refused. The {@code x-rucat-rekey}
 * header is removed before the call goes on. Tokens are never logged.
 */
public final class HandoverTokenInterceptor implements ServerInterceptor {
  /** The environment variable that holds the first token. */
  public static final String TOKEN_ENV = "RUCAT_ENGINE_TOKEN";
  /** The shortest new token a rekey accepts. */
  public static final int MIN_NEW_TOKEN_LENGTH = 32;

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> REKEY =
      Metadata.Key.of("x-rucat-rekey", Metadata.ASCII_STRING_MARSHALLER);
  private static final String BEARER = "Bearer ";

  private final Object lock = new Object();
  /** Whether a first token was configured; without one, every call is refused. */
  private final boolean configured;
  /** The token calls must carry (null only when none was configured). */
  private byte[] current;
  /** The token the last rekey replaced, for a second caller of the same handover; or null. */
  private byte[] previous;

  public HandoverTokenInterceptor() {
    this(System.getenv(TOKEN_ENV));
  }

  /** With the given first token (null or empty: every call is refused). */
  public HandoverTokenInterceptor(String initialToken) {
    if (initialToken == null || initialToken.isEmpty()) {
      System.err.println(
          "rucat engine auth: " + TOKEN_ENV + " is not set; every call will be refused");
      this.configured = false;
      this.current = null;
    } else {
      this.configured = true;
      this.current = bytes(initialToken);
    }
    this.previous = null;
  }

  @Override
  public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
      ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
    String rekey = headers.get(REKEY);
    // Never passed on to Spark, whatever the outcome.
    headers.removeAll(REKEY);

    if (!configured) {
      return refuse(call, "no engine token configured");
    }
    String authorization = headers.get(AUTHORIZATION);
    if (authorization == null) {
      return refuse(call, "No authentication token provided");
    }
    if (!authorization.startsWith(BEARER)) {
      return refuse(call, "Invalid authentication token");
    }
    byte[] token = bytes(authorization.substring(BEARER.length()));

    boolean allowed;
    if (rekey == null) {
      synchronized (lock) {
        allowed = MessageDigest.isEqual(token, current);
      }
    } else {
      allowed = isValidNewToken(rekey) && rekey(token, bytes(rekey));
    }
    if (!allowed) {
      return refuse(call, "Invalid authentication token");
    }
    return next.startCall(call, headers);
  }

  /** The state change of a rekey call; whether the call may go on. */
  private boolean rekey(byte[] token, byte[] newToken) {
    synchronized (lock) {
      // All comparisons made, whatever their outcome, so the time taken tells little.
      boolean isCurrent = MessageDigest.isEqual(token, current);
      boolean isPrevious = previous != null && MessageDigest.isEqual(token, previous);
      boolean newIsCurrent = MessageDigest.isEqual(newToken, current);
      if (isCurrent) {
        if (!newIsCurrent) {
          previous = current;
          current = newToken;
          System.err.println("rucat engine auth: the engine token was replaced");
        }
        return true;
      }
      // A second caller of the handover that just happened.
      return isPrevious && newIsCurrent;
    }
  }

  /** Non-empty, visible ASCII only (no spaces, no control characters), long enough. */
  static boolean isValidNewToken(String token) {
    if (token.length() < MIN_NEW_TOKEN_LENGTH) {
      return false;
    }
    for (int i = 0; i < token.length(); i++) {
      char c = token.charAt(i);
      if (c < 0x21 || c > 0x7e) {
        return false;
      }
    }
    return true;
  }

  private static byte[] bytes(String text) {
    return text.getBytes(StandardCharsets.UTF_8);
  }

  private static <ReqT, RespT> ServerCall.Listener<ReqT> refuse(
      ServerCall<ReqT, RespT> call, String description) {
    call.close(Status.UNAUTHENTICATED.withDescription(description), new Metadata());
    return new ServerCall.Listener<ReqT>() {};
  }
}
