"""Retrieval benchmarks in BEIR layout: `corpus.jsonl` ({"_id", "title"?, "text"}), `queries.jsonl` ({"_id",
"text"}) and `qrels.tsv` (header `query-id corpus-id score`, tab-separated, integer grades). The loader checks every
line and stops at the first problem with the file, line and what is wrong, before any model runs.

`bundled_to_beir("semanlink", out)` writes the Semanlink arXiv→tags set inside `cherche==2.2.1` (read as JSON,
never imported): a query is an arXiv paper (title + abstract), a document is a curator tag (label, alternative
labels, broader labels, comment), and the paper's tags are its relevant documents. `split_queries` splits it,
seeded, into queries the turn may learn from and queries its retrieval scoreboard holds out (`tasks/rag_eval`).

`bundled_to_beir("perovskite", out)` writes a second benchmark of another kind, never trained on: known-item search
over the 253 abstracts of OpenAI's `abstract2title` eval set inside `evals==3.0.1.post1`, all about perovskite solar
cells. A query is one of its 254 titles, its relevant document is its own abstract, and every other document is an
abstract on the same narrow topic: short jargon queries against near-duplicate passages, where a rewriter must add
the right words, not any words.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import InputError
from tasks.ingest.ingest import semanlink_dir


@dataclass
class Benchmark:
    corpus: dict[str, str]  # doc id -> text (title + text)
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}


def _jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object")
        for field in fields:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise InputError(f"{path}:{number}: field {field!r} must be a non-empty string")
        if row["_id"] in seen:
            raise InputError(f"{path}:{number}: duplicate _id {row['_id']!r}")
        seen.add(row["_id"])
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def load_beir(corpus_path: Path, queries_path: Path, qrels_path: Path) -> Benchmark:
    corpus = {
        r["_id"]: f"{r['title']}. {r['text']}" if str(r.get("title") or "").strip() else r["text"]
        for r in _jsonl(Path(corpus_path), ("_id", "text"))
    }
    queries = {r["_id"]: r["text"] for r in _jsonl(Path(queries_path), ("_id", "text"))}
    qrels: dict[str, dict[str, int]] = {}
    path = Path(qrels_path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or (number == 1 and line.lower().startswith("query-id")):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise InputError(f"{path}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score)")
        query_id, doc_id, grade = parts
        if not grade.strip().lstrip("-").isdigit():
            raise InputError(f"{path}:{number}: score {grade!r} is not an integer")
        if query_id not in queries:
            raise InputError(f"{path}:{number}: query-id {query_id!r} is not in {Path(queries_path).name}")
        if doc_id not in corpus:
            raise InputError(f"{path}:{number}: corpus-id {doc_id!r} is not in {Path(corpus_path).name}")
        qrels.setdefault(query_id, {})[doc_id] = int(grade)
    if not qrels:
        raise InputError(f"{path}: no judgments")
    return Benchmark(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)


def _labels(value) -> list[str]:
    """Semanlink stores lists as their Python repr ("['a', 'b']")."""
    if isinstance(value, list):
        return [str(v) for v in value]
    try:
        parsed = ast.literal_eval(value) if value else []
    except (ValueError, SyntaxError):
        return [str(value)]
    return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]


def _semanlink_rows() -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """The Semanlink arXiv→tags benchmark as BEIR rows: corpus, queries, qrels (query id, doc id, grade)."""
    folder = semanlink_dir()
    papers = json.loads((folder / "arxiv.json").read_text())
    tags = json.loads((folder / "tags.json").read_text())
    queries, qrels, used = [], [], {}
    for paper in papers:
        query_id = paper.get("arxiv_num") or paper["document"]
        text = " ".join(f"{paper.get('arxiv_title', '')}. {paper.get('arxiv_summary', '')}".split())
        queries.append({"_id": query_id, "text": text})
        for tag in dict.fromkeys(_labels(paper["tag"])):
            if tag in tags:
                used[tag] = tags[tag]
                qrels.append((query_id, tag, 1))
    corpus = []
    for tag, info in used.items():
        labels = _labels(info.get("prefLabel")) or [tag.rsplit("/", 1)[-1]]
        parts = [", ".join(labels[1:] + _labels(info.get("altLabel")))]
        broader = _labels(info.get("broader_prefLabel"))
        parts.append(f"broader: {', '.join(broader)}" if broader else "")
        parts.append(" ".join(str(info.get("comment") or "").split())[:500])
        corpus.append({"_id": tag, "title": labels[0], "text": ". ".join(p for p in parts if p) or labels[0]})
    return corpus, queries, qrels


def _perovskite_rows() -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """The abstract2title set as BEIR rows: a title queries its abstract (an abstract given two titles is one
    document relevant to both)."""
    from tasks.ingest.quartz import evals_samples

    corpus: dict[str, dict] = {}
    queries, qrels = [], []
    for line in evals_samples("abstract2title").read_text().splitlines():
        sample = json.loads(line)
        abstract, title = " ".join(sample["input"][-1]["content"].split()), " ".join(sample["ideal"].split())
        doc_id = "pv-" + hashlib.sha1(abstract.encode()).hexdigest()[:12]
        query_id = "pvq-" + hashlib.sha1(title.encode()).hexdigest()[:12]
        corpus[doc_id] = {"_id": doc_id, "text": abstract}
        queries.append({"_id": query_id, "text": title})
        qrels.append((query_id, doc_id, 1))
    return list(corpus.values()), queries, qrels


BUNDLED = {"semanlink": _semanlink_rows, "perovskite": _perovskite_rows}


def bundled_to_beir(name: str, out: Path) -> dict[str, int]:
    """Write a bundled benchmark (`BUNDLED`) to `out` in BEIR layout (atomically per file); returns counts."""
    corpus, queries, qrels = BUNDLED[name]()
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "corpus.jsonl", "".join(json.dumps(row) + "\n" for row in corpus))
    _write(out / "queries.jsonl", "".join(json.dumps(row) + "\n" for row in queries))
    _write(out / "qrels.tsv", "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return {"queries": len(queries), "documents": len(corpus), "judgments": len(qrels)}


def bundled_benchmark(name: str = "semanlink") -> Benchmark:
    """A bundled benchmark in memory, as `load_beir` reads the files `bundled_to_beir` writes."""
    corpus, queries, judgments = BUNDLED[name]()
    qrels: dict[str, dict[str, int]] = {}
    for query_id, doc_id, grade in judgments:
        qrels.setdefault(query_id, {})[doc_id] = grade
    return Benchmark(
        {row["_id"]: f"{row['title']}. {row['text']}" if row.get("title") else row["text"] for row in corpus},
        {row["_id"]: row["text"] for row in queries if row["_id"] in qrels},
        qrels,
    )


def split_queries(query_ids: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) query ids, each in a seeded order: a query's side depends only on the seed and its id, so
    the split is the same every turn and a query never crosses it."""
    keys = {q: hashlib.sha256(f"{seed}:queries:{q}".encode()).digest() for q in query_ids}
    ordered = sorted(query_ids, key=keys.__getitem__)
    heldout = [q for q in ordered if int.from_bytes(keys[q][:8], "big") / 2**64 < heldout_fraction]
    chosen = set(heldout)
    return [q for q in ordered if q not in chosen], heldout


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
