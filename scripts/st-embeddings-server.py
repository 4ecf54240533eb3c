"""An OpenAI-compatible /v1/embeddings endpoint serving a sentence-transformers model on the CPU,
for `deeprecall bench ingest --embedding-base-url`: the `openai` embedder's ingest rate against
a real model on the same machine, as TEI or vLLM would serve it there. Bench equipment, not a
server to deploy: one request at a time, no authentication.

Usage: PYTHON scripts/st-embeddings-server.py MODEL_DIR PORT THREADS
It prints "listening on PORT" once the model is loaded.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch
from sentence_transformers import SentenceTransformer

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model = SentenceTransformer(model_dir, device="cpu")


class Embeddings(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path.rstrip("/") != "/v1/embeddings":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = request["input"]
        if isinstance(texts, str):
            texts = [texts]
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
        tokens = sum(len(text.split()) for text in texts)
        body = json.dumps(
            {
                "object": "list",
                "model": request.get("model", ""),
                "data": [
                    {"object": "embedding", "index": index, "embedding": vector.tolist()}
                    for index, vector in enumerate(vectors)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


server = HTTPServer(("127.0.0.1", port), Embeddings)
print(f"listening on {port}", flush=True)
server.serve_forever()
