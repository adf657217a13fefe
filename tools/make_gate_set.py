"""Writes models/classifier/gate.jsonl: the evaluation gate set for classifier swaps.

Rows come from the dev split (seed 7, 15 %: the split the shipped head was NOT trained on,
same rule as src/train/data.rs `is_dev`) of ../shared/data/prompts.jsonl, permissive licences
only (no ShareGPT, no MSR), at most 24 per intent, then up to 8 more per
domain label, chosen by sha256 of the id (deterministic). Run from the repository root:

    python3 tools/make_gate_set.py ../shared/data/prompts.jsonl > models/classifier/gate.jsonl
"""
import hashlib
import json
import sys

SEED, DEV_PERCENT = 7, 15
# Every row keeps its own `license` field; CC-BY-SA rows stay under CC-BY-SA.
LICENCES = {
    "MIT", "Apache-2.0", "BSD-3-Clause", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0",
    "PAWS-free-use",
    "Apache-2.0 (natural-instructions); EuroParl / ALT (CC-BY-4.0) source sentences",
}


def split_group(r):
    if r["source"] == "sharegpt":
        conv, _, part = r["id"].rpartition("_")
        return conv if part.isdigit() and conv else r["id"]
    if r["source"].startswith("p3-"):
        _, _, n = r["id"].rpartition("-")
        return f'{r["source"]}#{n}'
    return r["id"]


def is_dev(r):
    h = hashlib.sha256(f"{SEED}:{split_group(r)}".encode()).digest()
    return int.from_bytes(h[:4], "little") % 100 < DEV_PERCENT


rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if r["license"] in LICENCES and is_dev(r)]
rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
picked, per_intent, per_domain = [], {}, {}
for r in rows:
    if r.get("intent") and per_intent.get(r["intent"], 0) < 24:
        per_intent[r["intent"]] = per_intent.get(r["intent"], 0) + 1
        picked.append(r)
ids = {r["id"] for r in picked}
for r in rows:
    d = r.get("domain")
    if d and r["id"] not in ids and per_domain.get(d, 0) < 8:
        per_domain[d] = per_domain.get(d, 0) + 1
        picked.append(r)
for r in picked:
    keep = {k: r.get(k) for k in ("id", "text", "intent", "domain", "complexity", "source", "license")}
    print(json.dumps(keep, ensure_ascii=False))
