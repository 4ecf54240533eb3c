import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { Interceptor } from "@connectrpc/connect";

import { bearerAuth, createDeepRecallClient, type DeepRecallClient } from "./client.js";

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
}

/**
 * Returns a Node.js client for `baseUrl` (`http://host:port`, or `https://` for TLS).
 *
 * ```ts
 * const client = connect("http://localhost:50051", { apiKey: process.env.DEEPRECALL_API_KEY });
 * for await (const event of client.query({ query: "Where is Kestrel?" })) console.log(event);
 * ```
 */
export function connect(baseUrl: string, options: ConnectOptions = {}): DeepRecallClient {
  const interceptors = [
    ...(options.apiKey ? [bearerAuth(options.apiKey)] : []),
    ...(options.interceptors ?? []),
  ];
  const transport =
    options.protocol === "grpc-web"
      ? options.httpVersion === "2"
        ? createGrpcWebTransport({ baseUrl, httpVersion: "2", interceptors })
        : createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors })
      : createGrpcTransport({ baseUrl, interceptors });
  return createDeepRecallClient(transport);
}

export { createGrpcTransport, createGrpcWebTransport };
