import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";

import {
  DeepRecall,
  type QueryEvent,
  type QueryRequestSchema,
  type QueryResult,
} from "./gen/deeprecall/v1/deeprecall_pb.js";

/** A client of the DeepRecall service: one method per RPC, streams as async iterables. */
export type DeepRecallClient = Client<typeof DeepRecall>;

/** A query request, as a plain object (`{ query: "...", budget: { maxSearchCalls: 4 } }`). */
export type QueryInit = MessageInitShape<typeof QueryRequestSchema>;

/** Returns an interceptor that sends `authorization: Bearer <apiKey>` with every call. */
export function bearerAuth(apiKey: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return await next(request);
  };
}

/** Creates a client on any Connect transport: gRPC or gRPC-Web, Node.js or browser. */
export function createDeepRecallClient(transport: Transport): DeepRecallClient {
  return createClient(DeepRecall, transport);
}

/** Options of {@link queryResult}: call options, plus a callback for every event. */
export interface QueryResultOptions extends CallOptions {
  /** Receives every event of the stream as it arrives, the final `result` included. */
  onEvent?: (event: QueryEvent) => void;
}

/**
 * Runs one query, hands its events to `onEvent` as they arrive and returns the final result.
 * A failed call rejects with a `ConnectError` whose `code` is the gRPC status code. A budget
 * that runs out is not an error: the result then has `partial` set.
 */
export async function queryResult(
  client: DeepRecallClient,
  request: QueryInit,
  options: QueryResultOptions = {},
): Promise<QueryResult> {
  const { onEvent, ...callOptions } = options;
  let result: QueryResult | undefined;
  for await (const event of client.query(request, callOptions)) {
    onEvent?.(event);
    if (event.event.case === "result") {
      result = event.event.value;
    }
  }
  if (result === undefined) {
    throw new ConnectError("the query stream ended without a result", Code.Unknown);
  }
  return result;
}
