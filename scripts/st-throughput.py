"""sentence-transformers' side of `deeprecall bench embed --python PYTHON`: embeds the texts of a
JSON file with the model of a directory, on the CPU with the threads given, and prints one JSON
line: texts, seconds, and the vectors of the first few texts (so that the bench can check both
sides computed the same thing). Run by the bench, which passes this text to `PYTHON -c`.

Arguments: MODEL_DIR TEXTS_JSON BATCH_SIZE THREADS
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, texts_path, batch_size, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
texts = json.load(open(texts_path, encoding="utf-8"))
model = SentenceTransformer(model_dir, device="cpu")
model.encode(texts[: int(batch_size)], batch_size=int(batch_size))
started = time.perf_counter()
vectors = model.encode(texts, batch_size=int(batch_size), convert_to_numpy=True)
seconds = time.perf_counter() - started
print(
    json.dumps(
        {
            "texts": len(texts),
            "seconds": seconds,
            "torch": torch.__version__,
            "first": [[float(x) for x in vector] for vector in vectors[:8]],
        }
    )
)
