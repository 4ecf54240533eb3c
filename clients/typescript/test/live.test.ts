// The built package against a live server (DEEPRECALL_ENDPOINT, e.g. http://127.0.0.1:50051),
// over gRPC and over gRPC-Web (HTTP/1.1 and HTTP/2) on the same port, with the API key in
// DEEPRECALL_API_KEY when the server requires one.
import assert from "node:assert/strict";
import { before, test } from "node:test";

import {
  Code,
  ConnectError,
  QueryMode,
  queryResult,
  type DeepRecallClient,
  type QueryEvent,
  type QueryResult,
} from "@deeprecall/client";
import { connect } from "@deeprecall/client/node";

const endpoint = process.env.DEEPRECALL_ENDPOINT ?? "";
const apiKey = process.env.DEEPRECALL_API_KEY || undefined;
const question = "Which city is the maker of the Aurora Strip controller board headquartered in?";
const collection = "ts-live";

const grpc = connect(endpoint, { apiKey });

function assertMultiHopAnswer(result: QueryResult): void {
  assert.match(result.answer, /Tampere/);
  assert.deepEqual([...result.citations].sort(), ["aurora-strip", "kestrel"]);
  assert.equal(result.partial, false, result.error);
}

async function collect(client: DeepRecallClient, query: string): Promise<QueryEvent[]> {
  const events: QueryEvent[] = [];
  for await (const event of client.query({ query, collection }, { timeoutMs: 60_000 })) {
    events.push(event);
  }
  return events;
}

function assertEndsWithOneResult(events: QueryEvent[]): QueryResult {
  const kinds = events.map((event) => event.event.case);
  assert.equal(kinds.filter((kind) => kind === "result").length, 1, kinds.join(","));
  const last = events[events.length - 1]?.event;
  assert.ok(last?.case === "result", kinds.join(","));
  assert.deepEqual(
    events.map((event) => event.sequence),
    events.map((_, index) => index),
  );
  return last.value;
}

before(async () => {
  assert.ok(endpoint, "DEEPRECALL_ENDPOINT names the server under test");
  const added = await grpc.addDocuments({
    collection,
    documents: [
      {
        id: "aurora-strip",
        content: "The Aurora Strip controller board is manufactured by Kestrel Fabrication.",
        metadata: { kind: "product" },
      },
      {
        id: "kestrel",
        content: "Kestrel Fabrication is headquartered in Tampere, Finland.",
        metadata: { kind: "supplier" },
      },
    ],
  });
  assert.deepEqual(added.ids, ["aurora-strip", "kestrel"]);
  assert.equal(added.documentCount, 2n);
});

test("a query streams its events over gRPC and ends with exactly one result", async () => {
  const events = await collect(grpc, question);
  assert.equal(events[0]?.event.case, "stepStarted");
  assert.ok(events.some((event) => event.event.case === "search"));
  assertMultiHopAnswer(assertEndsWithOneResult(events));

  const seen: QueryEvent[] = [];
  const result = await queryResult(
    grpc,
    { query: question, collection, filters: { kind: { $in: ["product", "supplier"] } } },
    { onEvent: (event) => seen.push(event) },
  );
  assertMultiHopAnswer(result);
  assert.equal(seen[seen.length - 1]?.event.case, "result");
});

test("a single-pass query makes one search and one model call", async () => {
  const result = await queryResult(grpc, {
    query: question,
    collection,
    mode: QueryMode.SINGLE_PASS,
    skipCache: true,
  });
  assert.equal(result.usage?.llmCalls, 1);
  assert.equal(result.usage?.searchCalls, 1);
});

test("a batch yields one item per query, a failing query as an item with its code", async () => {
  const items = new Map<number, string>();
  for await (const item of grpc.queryBatch({
    queries: [
      { query: question, collection },
      { query: "", collection },
    ],
    maxConcurrency: 2,
  })) {
    if (item.outcome.case === "result") {
      assertMultiHopAnswer(item.outcome.value);
    } else if (item.outcome.case === "error") {
      assert.equal(item.outcome.value.code, Code.InvalidArgument);
      assert.match(item.outcome.value.message, /query/);
    }
    items.set(item.index, item.outcome.case ?? "none");
  }
  assert.deepEqual(
    [...items.entries()].sort(([a], [b]) => a - b),
    [
      [0, "result"],
      [1, "error"],
    ],
  );
});

test("an empty query is rejected with INVALID_ARGUMENT naming the field", async () => {
  await assert.rejects(queryResult(grpc, { query: "  ", collection }), (error: unknown) => {
    const connectError = ConnectError.from(error);
    assert.equal(connectError.code, Code.InvalidArgument);
    assert.match(connectError.rawMessage, /^query/);
    return true;
  });
  await assert.rejects(
    grpc.addDocuments({ collection, documents: [{ id: "empty", content: "" }] }),
    (error: unknown) => ConnectError.from(error).code === Code.InvalidArgument,
  );
});

test("the unary calls answer: stats, delete, clear cache", async () => {
  const stats = await grpc.getStats({});
  assert.ok(stats.collections.some((c) => c.name === collection));
  assert.ok(stats.usage !== undefined && stats.usage.queries > 0n);
  const deleted = await grpc.deleteDocuments({ collection, ids: ["absent"] });
  assert.equal(deleted.deleted, 0n);
  await grpc.clearCache({ collection });
});

test("the API key goes as bearer metadata", { skip: apiKey === undefined }, async () => {
  for (const client of [connect(endpoint), connect(endpoint, { apiKey: "not-the-key-0000000000" })]) {
    await assert.rejects(client.getStats({}), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.Unauthenticated);
      return true;
    });
  }
});

for (const httpVersion of ["1.1", "2"] as const) {
  test(`a query streams over gRPC-Web on HTTP/${httpVersion}`, async () => {
    const web = connect(endpoint, { apiKey, protocol: "grpc-web", httpVersion });
    assertMultiHopAnswer(assertEndsWithOneResult(await collect(web, question)));
    await assert.rejects(queryResult(web, { query: "", collection }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.InvalidArgument);
      return true;
    });
  });
}
