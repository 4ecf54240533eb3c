import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { Interceptor } from "@connectrpc/connect";

import { bearerAuth, createDeepRecallClient, type DeepRecallClient } from "./client.js";

/**
 * TLS for an `https://` base URL. The values are PEM text (or Buffers holding it), not file
 * names, as Node.js's `tls.connect` takes them: `readFileSync("ca.crt")`.
 */
export interface TlsOptions {
  /**
   * The CA certificate(s) the server's certificate must chain to, in place of Node.js's
   * default roots (a private CA). Omitted: the default roots.
   */
  ca?: string | Buffer | Array<string | Buffer>;
  /** A client certificate (chain, leaf first), for a server that requires one: mutual TLS. */
  cert?: string | Buffer;
  /** The client certificate's private key; given with `cert`. */
  key?: string | Buffer;
  /** The name the server's certificate must carry, when it is not the base URL's host. */
  servername?: string;
}

/** How {@link connect} reaches the server. */
export interface ConnectOptions {
  /** Sent as `authorization: Bearer <apiKey>` with every call. */
  apiKey?: string;
  /**
   * `grpc` (HTTP/2, the default) or `grpc-web`, which the server accepts on the same port
   * when `[server] grpc_web = true`, over HTTP/1.1 or HTTP/2.
   */
  protocol?: "grpc" | "grpc-web";
  /** HTTP version for gRPC-Web; gRPC always uses HTTP/2. Defaults to `1.1`. */
  httpVersion?: "1.1" | "2";
  /** More interceptors, run after the one that sets the API key. */
  interceptors?: Interceptor[];
  /** CA, client certificate and server name for an `https://` base URL. */
  tls?: TlsOptions;
}

/**
 * Returns a Node.js client for `baseUrl` (`http://host:port`, or `https://` for TLS).
 *
 * ```ts
 * const client = connect("http://localhost:50051", { apiKey: process.env.DEEPRECALL_API_KEY });
 * for await (const event of client.query({ query: "Where is Kestrel?" })) console.log(event);
 *
 * // Mutual TLS: a private CA and a client certificate.
 * const secure = connect("https://deeprecall.internal:50051", {
 *   tls: {
 *     ca: readFileSync("ca.crt"),
 *     cert: readFileSync("client.crt"),
 *     key: readFileSync("client.key"),
 *   },
 * });
 * ```
 *
 * A call whose connection fails the TLS handshake (an untrusted server certificate, a missing
 * client certificate) fails with the handshake's error as its message (`Code.Internal`).
 */
export function connect(baseUrl: string, options: ConnectOptions = {}): DeepRecallClient {
  const interceptors = [
    ...(options.apiKey ? [bearerAuth(options.apiKey)] : []),
    ...(options.interceptors ?? []),
  ];
  const nodeOptions = tlsNodeOptions(baseUrl, options.tls);
  const transport =
    options.protocol === "grpc-web"
      ? options.httpVersion === "2"
        ? createGrpcWebTransport({ baseUrl, httpVersion: "2", interceptors, nodeOptions })
        : createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors, nodeOptions })
      : createGrpcTransport({ baseUrl, interceptors, nodeOptions });
  return createDeepRecallClient(transport);
}

/** The options for Node.js's `http2.connect` and `https.request`: only those given. */
function tlsNodeOptions(baseUrl: string, tls: TlsOptions | undefined): TlsOptions | undefined {
  if (tls === undefined) {
    return undefined;
  }
  if (new URL(baseUrl).protocol !== "https:") {
    throw new Error(`connect: TLS options need an https:// base URL, not ${baseUrl}`);
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new Error("connect: tls.cert and tls.key go together (a client certificate and its key)");
  }
  const given: TlsOptions = {};
  if (tls.ca !== undefined) given.ca = tls.ca;
  if (tls.cert !== undefined) given.cert = tls.cert;
  if (tls.key !== undefined) given.key = tls.key;
  if (tls.servername !== undefined) given.servername = tls.servername;
  return given;
}

export { createGrpcTransport, createGrpcWebTransport };
