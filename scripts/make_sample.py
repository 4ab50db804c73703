"""Build the bundled demo sample (data/sample) and test slices (tests/data) from ../shared/corpora.

Deterministic: the same corpora give the same files.  Only redistributable parts go into
data/sample (see data/sample/NOTICE); tests/data also holds small slices of the
share-alike and test-use-only parts, with their notices.

    python scripts/make_sample.py --corpora ../shared/corpora
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (corpus file, source prefix, lang, how many records) -> output file, for the demo sample.
DEMO = {
    "general/general_en.jsonl": [("general_en.jsonl", "npm:@stdlib", None, 150), ("general_en.jsonl", "github:gutenbergbooks", None, 150)],
    "general/general_zh.jsonl": [("general_zh.jsonl", "github:thu-coai", None, 400)],
    "domain/medical_en.jsonl": [("domain_medical.jsonl", "github:abachaa", "en", 500)],
    "expert/expert.jsonl": [("expert.jsonl", "github:ydli-ai", None, 400), ("expert.jsonl", "github:LawRefBook", None, 60), ("expert.jsonl", "github:abachaa", None, 200)],
    "dialogues/dialogues.jsonl": [("dialogues.jsonl", "github:thu-coai", None, 40), ("dialogues.jsonl", "github:abachaa", None, 150)],
    "html/html_pages.jsonl": [("html_pages.jsonl", "deb:", "zh", 4), ("html_pages.jsonl", "deb:", "en", 4)],
}
# Small slices for tests (may include test-use-only and share-alike parts).
TESTS = {
    "general_zh.jsonl": [("general_zh.jsonl", "github:ymcui", None, 40), ("general_zh.jsonl", "github:DRCKnowledgeTeam", None, 40),
                         ("general_zh.jsonl", "github:thu-coai", None, 40)],
    "general_en.jsonl": [("general_en.jsonl", "npm:@stdlib", None, 40), ("general_en.jsonl", "github:gutenbergbooks", None, 60)],
    "domain_medical.jsonl": [("domain_medical.jsonl", "github:Toyhom", None, 60), ("domain_medical.jsonl", "github:abachaa", None, 40)],
    "expert.jsonl": [("expert.jsonl", "github:ydli-ai", None, 40), ("expert.jsonl", "github:LawRefBook", None, 10), ("expert.jsonl", "github:abachaa", None, 30)],
    "dialogues.jsonl": [("dialogues.jsonl", "github:thu-coai", None, 10), ("dialogues.jsonl", "github:abachaa", None, 20)],
    "html_pages.jsonl": [("html_pages.jsonl", "deb:", "zh", 3), ("html_pages.jsonl", "deb:", "en", 3), ("html_pages.jsonl", "github:gutenbergbooks", None, 1)],
}


def pick(corpora: Path, spec) -> list[str]:
    out = []
    for fname, prefix, lang, n in spec:
        rows = []
        with open(corpora / fname, encoding="utf-8") as handle:
            for line in handle:
                rec = json.loads(line)
                if rec["source"].startswith(prefix) and (lang is None or rec.get("lang") == lang):
                    rows.append(line)
        # an even, deterministic spread over the matching records
        step = max(1, len(rows) // n)
        out.extend(rows[::step][:n])
    return out


def write(target: Path, plan: dict, corpora: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for rel, spec in plan.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = pick(corpora, spec)
        path.write_text("".join(lines), encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(lines)} records, {path.stat().st_size / 1e6:.2f} MB, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}")
    lic = target / "licenses"
    lic.mkdir(exist_ok=True)
    for f in sorted((corpora / "licenses").iterdir()):
        shutil.copy(f, lic / f.name)


def write_kafka_sample(corpora: Path) -> None:
    """data/kafka_sample/messages.jsonl: records for the streaming demo (not in data/sample),
    with a few malformed lines on purpose, to show the dead-letter output."""
    rows = [line for line in open(corpora / "general_en.jsonl", encoding="utf-8") if json.loads(line)["source"].startswith("github:gutenbergbooks")]
    picked = rows[75::6][:120]  # offset from the demo sample's spread: disjoint records
    demo_ids = {json.loads(line)["id"] for line in (ROOT / "data" / "sample" / "general" / "general_en.jsonl").open(encoding="utf-8")}
    picked = [line for line in picked if json.loads(line)["id"] not in demo_ids]
    bad = ['{"id": "broken-1", "text": "unterminated\n', '["not", "an", "object"]\n', '{"id": "empty-1", "text": ""}\n']
    for k, line in enumerate(bad):
        picked.insert(10 + 37 * k, line)
    target = ROOT / "data" / "kafka_sample" / "messages.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(picked), encoding="utf-8")
    print(f"{target.relative_to(ROOT)}: {len(picked)} lines ({len(bad)} malformed on purpose)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"), help="folder of the shared corpora")
    args = parser.parse_args()
    corpora = Path(args.corpora)
    write(ROOT / "data" / "sample", DEMO, corpora)
    write(ROOT / "tests" / "data", TESTS, corpora)
    write_kafka_sample(corpora)


if __name__ == "__main__":
    main()
