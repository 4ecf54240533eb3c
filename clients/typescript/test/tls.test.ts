// TLS and mutual TLS through connect(). The option checks need no server. The live tests run
// against an https:// DEEPRECALL_ENDPOINT whose certificate the CA in DEEPRECALL_TLS_CA (a PEM
// file) signed, presenting the client certificate in DEEPRECALL_TLS_CLIENT_CERT and
// DEEPRECALL_TLS_CLIENT_KEY when they are set (a server requiring it: mutual TLS), over gRPC
// and gRPC-Web. DEEPRECALL_API_KEY, when set, goes with every call too.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Code, ConnectError, queryResult, type DeepRecallClient } from "@deeprecall/client";
import { connect, type TlsOptions } from "@deeprecall/client/node";

const endpoint = process.env.DEEPRECALL_ENDPOINT ?? "";
const apiKey = process.env.DEEPRECALL_API_KEY || undefined;
const question = "Which city is the maker of the Aurora Strip controller board headquartered in?";

function pem(variable: string): Buffer | undefined {
  const path = process.env[variable];
  return path ? readFileSync(path) : undefined;
}

const ca = pem("DEEPRECALL_TLS_CA");
const cert = pem("DEEPRECALL_TLS_CLIENT_CERT");
const key = pem("DEEPRECALL_TLS_CLIENT_KEY");
const tls: TlsOptions = { ca, cert, key };
const skipLive =
  endpoint.startsWith("https://") && ca !== undefined
    ? false
    : "needs an https:// DEEPRECALL_ENDPOINT and its CA in DEEPRECALL_TLS_CA";
const skipMutual =
  skipLive || (cert !== undefined && key !== undefined ? false : "needs a client certificate");

/** The error of a call that must fail. */
async function refusal(client: DeepRecallClient): Promise<ConnectError> {
  try {
    await client.getStats({});
  } catch (error) {
    return ConnectError.from(error);
  }
  assert.fail("the call succeeded");
}

/** The connection failed in the TLS handshake, before any call reached the server's checks. */
function assertRefusedInTheHandshake(error: ConnectError, reason: RegExp): void {
  assert.ok(
    ![Code.Unauthenticated, Code.PermissionDenied].includes(error.code),
    `the handshake let the call in: ${error.message}`,
  );
  assert.match(error.message, reason);
}

test("TLS options need an https:// base URL", () => {
  assert.throws(
    () => connect("http://127.0.0.1:50051", { tls: { ca: "-----BEGIN CERTIFICATE-----" } }),
    /TLS options need an https:\/\/ base URL, not http:\/\/127\.0\.0\.1:50051/,
  );
});

test("a client certificate needs its key", () => {
  for (const half of [{ cert: "certificate" }, { key: "key" }]) {
    assert.throws(
      () => connect("https://127.0.0.1:50051", { tls: half }),
      /tls\.cert and tls\.key go together/,
    );
  }
});

for (const [protocol, httpVersion] of [
  ["grpc", "2"],
  ["grpc-web", "1.1"],
  ["grpc-web", "2"],
] as const) {
  test(
    `${protocol} over HTTP/${httpVersion} and TLS, with the CA and the client certificate`,
    { skip: skipLive },
    async () => {
      const client = connect(endpoint, { apiKey, protocol, httpVersion, tls });
      const collection = `ts-tls-${protocol}-${httpVersion.replace(".", "")}`;
      const added = await client.addDocuments({
        collection,
        documents: [
          {
            id: "aurora-strip",
            content: "The Aurora Strip controller board is manufactured by Kestrel Fabrication.",
          },
          { id: "kestrel", content: "Kestrel Fabrication is headquartered in Tampere, Finland." },
        ],
      });
      assert.equal(added.documentCount, 2n);
      const result = await queryResult(
        client,
        { query: question, collection },
        { timeoutMs: 60_000 },
      );
      assert.match(result.answer, /Tampere/);
      assert.deepEqual([...result.citations].sort(), ["aurora-strip", "kestrel"]);
      const stats = await client.getStats({});
      assert.ok(stats.collections.some((c) => c.name === collection && c.documentCount === 2n));
    },
  );
}

test("without the CA, the server's certificate is not trusted", { skip: skipLive }, async () => {
  // Node.js's default roots do not include the private CA.
  const error = await refusal(connect(endpoint, { apiKey, tls: { cert, key } }));
  assertRefusedInTheHandshake(error, /unable to verify|certificate/);
});

test("the server's certificate must carry the expected name", { skip: skipLive }, async () => {
  const error = await refusal(
    connect(endpoint, { apiKey, tls: { ...tls, servername: "elsewhere.invalid" } }),
  );
  assertRefusedInTheHandshake(error, /elsewhere\.invalid/);
});

test("without the client certificate, the server refuses it", { skip: skipMutual }, async () => {
  for (const [protocol, httpVersion, reason] of [
    ["grpc", "2", /certificate required/],
    ["grpc-web", "2", /certificate required/],
    // Over HTTP/1.1 the request may be written before the server's alert is read: the alert
    // then surfaces as the connection closing under the write.
    ["grpc-web", "1.1", /certificate required|EPIPE|ECONNRESET|socket hang up/],
  ] as const) {
    const error = await refusal(connect(endpoint, { apiKey, protocol, httpVersion, tls: { ca } }));
    assertRefusedInTheHandshake(error, reason);
  }
});
