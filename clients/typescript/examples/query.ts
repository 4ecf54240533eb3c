// Adds two documents, streams a query with its trace, runs a small batch and prints what came
// back, over gRPC or gRPC-Web.
//
//   DEEPRECALL_ENDPOINT=http://localhost:50051 node build-test/examples/query.js [--grpc-web]
//
// DEEPRECALL_API_KEY, when set, is sent as a bearer token. --grpc-web needs a server started
// with `[server] grpc_web = true` (or `--grpc-web`). For an https:// endpoint,
// DEEPRECALL_TLS_CA names the PEM file of a private CA to trust instead of Node.js's roots, and
// DEEPRECALL_TLS_CLIENT_CERT and DEEPRECALL_TLS_CLIENT_KEY a client certificate (mutual TLS).
import { readFileSync } from "node:fs";

import { Code, ConnectError, queryResult, type QueryEvent } from "@deeprecall/client";
import { connect } from "@deeprecall/client/node";

const endpoint = process.env.DEEPRECALL_ENDPOINT ?? "http://localhost:50051";
const grpcWeb = process.argv.includes("--grpc-web");
const collection = process.env.DEEPRECALL_COLLECTION ?? "ts-example";

/** The contents of the PEM file an environment variable names, if it names one. */
function pemFrom(variable: string): Buffer | undefined {
  const path = process.env[variable];
  return path ? readFileSync(path) : undefined;
}

const ca = pemFrom("DEEPRECALL_TLS_CA");
const cert = pemFrom("DEEPRECALL_TLS_CLIENT_CERT");
const key = pemFrom("DEEPRECALL_TLS_CLIENT_KEY");
const client = connect(endpoint, {
  apiKey: process.env.DEEPRECALL_API_KEY,
  protocol: grpcWeb ? "grpc-web" : "grpc",
  tls: ca || cert || key ? { ca, cert, key } : undefined,
});

function describe(event: QueryEvent): string {
  switch (event.event.case) {
    case "stepStarted":
      return `step ${event.event.value.step}`;
    case "llmCall":
      return `  model ${event.event.value.model} calls ${event.event.value.toolCalls.join(", ") || "nothing"}`;
    case "search": {
      const hits = event.event.value.hits.map((hit) => `${hit.id} (${hit.score.toFixed(4)})`);
      return `  search "${event.event.value.query}": ${hits.join(", ")}`;
    }
    case "subLlmCall":
      return `  sub-model ${event.event.value.model}: ${event.event.value.prompts} prompt(s)`;
    case "stepCompleted":
      return `  step ${event.event.value.step} done: ${event.event.value.tools.join(", ")}`;
    case "budgetWarning":
      return `  budget: ${event.event.value.message}`;
    case "answerDelta":
      return `  answer so far: ${event.event.value.text}`;
    case "result":
      return "result";
    default:
      return "(unknown event)";
  }
}

async function main(): Promise<void> {
  console.log(`endpoint ${endpoint} over ${grpcWeb ? "gRPC-Web" : "gRPC"}`);

  const added = await client.addDocuments({
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
  console.log(`added ${added.ids.join(", ")}; ${added.documentCount} document(s) in ${collection}`);

  const result = await queryResult(
    client,
    {
      query: "Which city is the maker of the Aurora Strip controller board headquartered in?",
      collection,
      budget: { maxSearchCalls: 6 },
    },
    { onEvent: (event) => console.log(describe(event)), timeoutMs: 60_000 },
  );
  console.log(`answer (confidence ${result.confidence.toFixed(2)}): ${result.answer}`);
  console.log(`citations: ${result.citations.join(", ")}`);

  for await (const item of client.queryBatch({
    queries: [
      { query: "Where is Kestrel Fabrication headquartered?", collection },
      { query: "", collection },
    ],
    maxConcurrency: 2,
  })) {
    if (item.outcome.case === "result") {
      console.log(`batch #${item.index}: ${item.outcome.value.answer}`);
    } else if (item.outcome.case === "error") {
      console.log(`batch #${item.index} failed: ${Code[item.outcome.value.code]}: ${item.outcome.value.message}`);
    }
  }

  try {
    await queryResult(client, { query: "", collection });
  } catch (error) {
    const connectError = ConnectError.from(error);
    console.log(`an empty query: ${Code[connectError.code]}: ${connectError.rawMessage}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
