#!/usr/bin/env python3
"""Word overlap between the questions of an eval dataset and the chunks that answer them.

For each question it prints the share of the question's content-word stems (lowercase, not a
stopword, crudely stemmed) that also occur in the text of its supporting chunks, and the mean
over the file. `examples/paraphrases.jsonl` is written to share few words with its passages (so
that word-overlap retrieval misses where an embedding model finds), `examples/questions.json`
is not: the two means side by side show the difference.

It also checks each dataset and exits with status 1 on a failure: ids are unique, every
supporting id names an existing chunk of `examples/handbook/` (chunked as `deeprecall ingest`
does with its default chunk size), and every accepted answer occurs, case-insensitively, in the
last supporting chunk.

Usage: scripts/paraphrase-overlap.py [--quiet] [DATASET ...]
       (default: examples/paraphrases.jsonl examples/questions.json)
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDBOOK = os.path.join(ROOT, "examples", "handbook")
DEFAULT_DATASETS = ["examples/paraphrases.jsonl", "examples/questions.json"]
CHUNK_SIZE = 1200  # the default of `deeprecall ingest --chunk-size`

# The stopwords of src/text.rs, so "overlap" means what keyword search and the hashing
# embedder see.
STOPWORDS = set(
    """
    a about after all also am an and any are as at be been before being both but by can could
    did do does doing done each for from had has have having he her here hers him his how i if
    in into is it its me more most my no nor not of on once only or other our ours out over own
    same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom
    whose why will with would you your yours tell please named called
    """.split()
)


def stem(word):
    """Crude stem: strips one trailing 'ing', 'ed', 'es' or 's' from a word long enough."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def stems(text):
    """The set of stems of the content words of `text` (split on non-alphanumerics)."""
    words = (w for w in re.split(r"[^0-9a-z]+", text.lower()) if w)
    return {stem(w) for w in words if w not in STOPWORDS}


def sentences(text):
    """Sentences as src/text.rs cuts them: on '.', '!', '?' before a space or the end, and on
    line breaks."""
    pieces = re.split(r"(?<=[.!?])(?=[ \r\n]|$)|\n", text)
    out = []
    for piece in pieces:
        trimmed = piece.strip().lstrip("#").strip()
        if any(c.isalnum() for c in trimmed):
            out.append(trimmed)
    return out


def chunk_file(text, size=CHUNK_SIZE):
    """The chunks of a file as src/cli/ingest.rs makes them: whole paragraphs packed up to
    `size` characters, a longer paragraph cut into sentences (and a longer sentence cut hard)."""
    pieces = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        if len(paragraph) <= size:
            pieces.append(paragraph)
            continue
        for sentence in sentences(paragraph):
            pieces.extend(
                part
                for part in (sentence[i : i + size] for i in range(0, len(sentence), size))
                if part.strip()
            )
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + len(piece) + 2 > size:
            chunks.append(current)
            current = ""
        current = current + "\n\n" + piece if current else piece
    if current.strip():
        chunks.append(current)
    return chunks


def load_handbook():
    """Maps every chunk id (`<file>#<n>`) of the handbook to its text."""
    chunks = {}
    for name in sorted(os.listdir(HANDBOOK)):
        if name.startswith(".") or not name.endswith((".md", ".markdown", ".txt", ".text")):
            continue
        with open(os.path.join(HANDBOOK, name), encoding="utf-8") as handle:
            text = handle.read()
        for index, chunk in enumerate(chunk_file(text)):
            chunks[f"{name}#{index}"] = chunk
    return chunks


def without_title(chunk):
    """The chunk minus a leading `# Title` line."""
    lines = chunk.split("\n")
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    return "\n".join(lines)


def check(path, chunks, quiet):
    """Prints the overlaps of one dataset; returns (mean overlap or None, problems)."""
    problems = []
    shares = []
    seen = {}
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not quiet:
        print(f"== {path}")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: not JSON: {error}")
            continue
        qid = item.get("id") or f"line-{number}"
        if qid in seen:
            problems.append(f"{where}: id {qid!r} already used on line {seen[qid]}")
        else:
            seen[qid] = number
        question = item.get("question", "")
        answers = item.get("answers") or []
        supporting = item.get("supporting_ids") or []
        if not question.strip():
            problems.append(f"{where}: empty question")
        if not answers:
            problems.append(f"{where}: no answers")
        if not supporting:
            problems.append(f"{where}: no supporting_ids")
            continue
        missing = [s for s in supporting if s not in chunks]
        for s in missing:
            problems.append(f"{where}: supporting id {s!r} names no chunk of examples/handbook")
        if missing:
            continue
        last = chunks[supporting[-1]].lower()
        for answer in answers:
            if answer.lower() not in last:
                problems.append(f"{where}: answer {answer!r} is not in {supporting[-1]}")
        passage = stems(" ".join(without_title(chunks[s]) for s in supporting))
        asked = stems(question)
        shared = asked & passage
        share = len(shared) / len(asked) if asked else 0.0
        shares.append(share)
        if not quiet:
            hop = "2-hop" if len(supporting) > 1 else "1-hop"
            print(f"{share:5.2f}  {hop}  {qid:<40} shared: {' '.join(sorted(shared)) or '-'}")
    mean = sum(shares) / len(shares) if shares else None
    if not quiet and mean is not None:
        print(f"mean {mean:.3f} over {len(shares)} question(s)\n")
    return mean, problems


def main(argv):
    quiet = "--quiet" in argv
    paths = [a for a in argv if a != "--quiet"] or DEFAULT_DATASETS
    chunks = load_handbook()
    means, problems = [], []
    for path in paths:
        if not os.path.exists(os.path.join(ROOT, path)):
            problems.append(f"{path}: no such file")
            means.append((path, None))
            continue
        mean, found = check(path, chunks, quiet)
        means.append((path, mean))
        problems.extend(found)
    print("mean share of question stems found in the supporting chunks:")
    for path, mean in means:
        print(f"  {'-' if mean is None else f'{mean:.3f}':>6}  {path}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
