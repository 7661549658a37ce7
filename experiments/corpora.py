"""Three text domains every Python installation carries (nothing is downloaded).

prose      standard-library docstrings (cpt_jax.demo.corpus)
code       standard-library source without docstrings (cpt_jax.demo.corpus)
reference  the Python Language Reference help topics that pydoc ships (pydoc_data/topics.py):
           reStructuredText-flavoured manual text, a third distribution next to prose and code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cpt_jax.demo.corpus import build_corpus

DOMAINS = ("prose", "code", "reference")


def _reference_docs() -> list[tuple[str, str]]:
    import pydoc_data.topics as topics

    docs = []
    for name, text in sorted(topics.topics.items()):
        # Long topics are cut at paragraph boundaries so one topic cannot dominate a batch.
        chunk: list[str] = []
        for para in text.split("\n\n"):
            chunk.append(para)
            if sum(map(len, chunk)) > 4000:
                docs.append((name, "\n\n".join(chunk)))
                chunk = []
        if chunk:
            docs.append((name, "\n\n".join(chunk)))
    return docs


def build(out: Path, max_files: int | None = None, heldout_fraction: float = 0.08) -> dict[str, int]:
    """Write DOMAIN/{train,heldout}.jsonl for the three domains under `out`."""
    counts = build_corpus(out, max_files=max_files, heldout_fraction=heldout_fraction)
    ref = out / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    files = {s: (ref / f"{s}.jsonl").open("w") for s in ("train", "heldout")}
    for i, (name, text) in enumerate(_reference_docs()):
        h = int(hashlib.sha256(f"{name}/{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        split = "heldout" if h < 0.12 else "train"
        files[split].write(json.dumps({"text": text}) + "\n")
        counts[f"reference/{split}"] = counts.get(f"reference/{split}", 0) + 1
    for f in files.values():
        f.close()
    return counts


def small_subset(src: Path, out: Path, chars: int) -> int:
    """A small domain for many-epoch CPT (experiment 9): the first training documents of `src`
    up to `chars` characters, with `src`'s held-out split. Returns the number of documents."""
    out.mkdir(parents=True, exist_ok=True)
    kept, total = [], 0
    with open(src / "train.jsonl") as f:
        for line in f:
            if total >= chars:
                break
            kept.append(line)
            total += len(json.loads(line)["text"])
    (out / "train.jsonl").write_text("".join(kept))
    (out / "heldout.jsonl").write_text((src / "heldout.jsonl").read_text())
    return len(kept)
