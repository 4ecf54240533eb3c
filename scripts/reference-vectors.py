#!/usr/bin/env python3
"""Computes, with sentence-transformers itself, what the local embedder and the local reranker
must return, into tests/fixtures/local-models-reference.json. The Rust tests of
src/embed/local.rs and src/rerank/local.rs compare against it; they run without Python.

Needs sentence-transformers (which brings torch) and the model of scripts/install-models.sh:

    python3 -m venv .models/st && .models/st/bin/pip install sentence-transformers
    .models/st/bin/python scripts/reference-vectors.py [MODEL_DIR]

No cross-encoder ships on PyPI, so the reranker's reference is a cross-encoder built from
all-MiniLM-L6-v2: its encoder and pooler under "bert.", and a classifier whose weights follow a
formula (cross_encoder_head below) that the Rust test repeats. The scores are meaningless as
relevance and exact as arithmetic, which is what the test is about: pair tokenization, the
pooler, the classifier and the activation, as sentence-transformers runs them.
"""

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sentence_transformers import CrossEncoder, SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "local-models-reference.json"

LONG = " ".join(
    f"Clause {n}: the travel policy reimburses economy fares booked through the portal."
    for n in range(1, 60)
)
SENTENCES = [
    "Who pays for my trip to the conference?",
    "Travel expenses for events are reimbursed by the team's budget holder.",
    "The Aurora Strip controller board is made by Klaxon Industries.",
    "What does it cost?",
    "Ünïcödé, accents, and ponctuation — «quoted» text; 東京 and Σ symbols.",
    "",
    LONG,
]
QUERY = "Who pays for my trip to the conference?"
PASSAGES = [
    "Travel expenses for events are reimbursed by the team's budget holder.",
    "The Aurora Strip controller board is made by Klaxon Industries.",
    LONG,
    "",
]


def cross_encoder_head(hidden: int) -> dict:
    """The classifier the Rust test builds too: weight[j] = sin(j + 1) / 2, bias 0.05."""
    weight = np.array([math.sin(j + 1) / 2 for j in range(hidden)], dtype=np.float32)
    return {
        "classifier.weight": weight.reshape(1, hidden),
        "classifier.bias": np.array([0.05], dtype=np.float32),
    }


def build_cross_encoder(model_dir: Path, target: Path) -> None:
    weights = load_file(str(model_dir / "model.safetensors"))
    tensors = {f"bert.{name}": value for name, value in weights.items()}
    config = json.loads((model_dir / "config.json").read_text())
    tensors.update(cross_encoder_head(config["hidden_size"]))
    save_file(tensors, str(target / "model.safetensors"))
    config["architectures"] = ["BertForSequenceClassification"]
    config["num_labels"] = 1
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, target / name)
    vocab = model_dir / "vocab.txt"
    if vocab.exists():
        shutil.copy(vocab, target / "vocab.txt")


def main() -> None:
    model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".models" / "all-minilm-l6-v2")
    embedder = SentenceTransformer(str(model_dir), device="cpu")
    vectors = embedder.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    with tempfile.TemporaryDirectory() as scratch:
        build_cross_encoder(model_dir, Path(scratch))
        # max_length as the Rust reranker takes it by default: the model's positions.
        reranker = CrossEncoder(scratch, device="cpu", max_length=512)
        scores = reranker.predict([(QUERY, passage) for passage in PASSAGES])
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(
        json.dumps(
            {
                "about": "sentence-transformers reference; regenerate with "
                "scripts/reference-vectors.py",
                "model": "all-MiniLM-L6-v2",
                "embeddings": [
                    {"text": text, "vector": [round(float(x), 7) for x in vector]}
                    for text, vector in zip(SENTENCES, vectors)
                ],
                "rerank": {
                    "query": QUERY,
                    "passages": PASSAGES,
                    "scores": [round(float(score), 7) for score in scores],
                },
            },
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
