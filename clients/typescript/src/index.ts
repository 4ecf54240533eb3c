// The generated messages, enums and service descriptor, plus a few transport-neutral helpers.
// Transports come from @connectrpc/connect-node (see "./node") or @connectrpc/connect-web.
export * from "./gen/deeprecall/v1/deeprecall_pb.js";
export {
  bearerAuth,
  createDeepRecallClient,
  queryResult,
  type DeepRecallClient,
  type QueryInit,
  type QueryResultOptions,
} from "./client.js";
export { Code, ConnectError } from "@connectrpc/connect";
