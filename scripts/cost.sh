#!/usr/bin/env bash
# What the AWS deployment costs per 1,000 documents, from measured counts, at list prices.
#
#   scripts/cost.sh COUNTS.json          a table, then "total: $X per 1,000 documents"
#   scripts/cost.sh --json COUNTS.json   the same figures as one JSON object
#
# Prices: us-east-1, Lambda on arm64, on-demand list prices as checked on 2026-12-01 (AWS
# pricing pages for Lambda, API Gateway, DynamoDB, SQS, S3 and S3 Vectors); no free tier,
# no Savings Plans. Change them below if yours differ.
#
# COUNTS.json holds the totals of one run over `documents` documents (every field optional
# but `documents`; storage is what the run left stored, priced per month):
#   {"documents": 20, "source": "what measured this",
#    "lambda": {"ingest": {"invocations": 20, "avg_duration_ms": 40, "memory_mb": 256}, ...},
#    "http_api_requests": 20,
#    "dynamodb": {"read_units": 900, "write_units": 700, "stored_bytes": 50000},
#    "sqs": {"requests": 180},
#    "s3": {"put_requests": 20, "get_requests": 40, "stored_bytes": 90000},
#    "s3_vectors": {"put_requests": 20, "put_bytes": 200000, "query_requests": 0,
#                   "query_bytes_processed": 0, "other_requests": 20, "stored_bytes": 200000},
#    "model": {"input_tokens": 40000, "output_tokens": 2000, "cost_usd": 0.05}}
# `model.cost_usd` is what pai recorded on the jobs (usage.cost_usd, at MODEL_PRICES or its
# built-in list prices); without it the tokens are priced at `model.price_in`/`price_out`
# (USD per 1M tokens).
#
# Where the counts come from: tests/tests/e2e.rs (aws_request_counts_price_out_per_document)
# runs the pipeline over the embedded adapters wrapped in counting ports
# (tests/src/counting.rs), which count each call as the request the AWS adapter makes for it
# (DynamoDB units from item sizes, S3 and S3 Vectors requests and bytes, SQS batches). SQS
# receives and deletes, Lambda invocations and API Gateway requests are derived from the
# pipeline's call pattern (one invocation per message at low traffic, one receive and one
# delete batch per invocation, one HTTP request per webhook); Lambda durations are the
# measured handling time plus an assumed model latency per call (stated in the counts'
# `source`), so replace them with CloudWatch's averages for a real deployment.
set -euo pipefail

json=false
if [ "${1:-}" = "--json" ]; then
  json=true
  shift
fi
if [ $# -ne 1 ] || [ ! -r "$1" ]; then
  echo "usage: scripts/cost.sh [--json] COUNTS.json" >&2
  exit 2
fi

exec python3 - "$1" "$json" <<'EOF'
import json, math, sys

# USD, us-east-1, list prices checked 2026-12-01.
PRICES = {
    "lambda_request": 0.20 / 1e6,            # per invocation
    "lambda_gb_second_arm64": 0.0000133334,  # first 7.5 billion GB-s a month
    "http_api_request": 1.00 / 1e6,          # API Gateway HTTP API, first 300 million
    "dynamodb_write_unit": 0.625 / 1e6,      # on-demand write request unit (1 KB)
    "dynamodb_read_unit": 0.125 / 1e6,       # on-demand read request unit (4 KB strong)
    "dynamodb_gb_month": 0.25,
    "sqs_request": 0.40 / 1e6,               # standard queue, per 64 KB request
    "s3_put_request": 0.005 / 1000,          # PUT, COPY, POST, LIST
    "s3_get_request": 0.0004 / 1000,
    "s3_gb_month": 0.023,                    # S3 Standard, first 50 TB
    "s3_vectors_put_gb": 0.20,               # per GB of logical vector data written
    "s3_vectors_gb_month": 0.06,
    "s3_vectors_query_request": 2.50 / 1e6,
    "s3_vectors_query_tb": 0.004,            # data processed, first tier
    # Get/List/Delete are not priced separately on the pricing page as checked: charged
    # here like queries, an upper bound.
    "s3_vectors_other_request": 2.50 / 1e6,
}
GB = 1024 ** 3

path, as_json = sys.argv[1], sys.argv[2] == "true"
try:
    with open(path) as f:
        counts = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{path}: not a counts JSON: {e}")
if not isinstance(counts, dict):
    sys.exit(f"{path}: not a counts JSON object")

def number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        sys.exit(f"{path}: {where} must be a number >= 0, not {value!r}")
    return float(value)

def section(name):
    s = counts.get(name, {})
    if not isinstance(s, dict):
        sys.exit(f"{path}: {name} must be an object")
    return s

def get(s, key, name):
    return number(s.get(key, 0), f"{name}.{key}")

documents = number(counts.get("documents", 0), "documents")
if documents <= 0:
    sys.exit(f"{path}: documents must be > 0")

lines = {}  # component -> USD for this run
lam = section("lambda")
invocations = gb_seconds = 0.0
for function, f in sorted(lam.items()):
    if not isinstance(f, dict):
        sys.exit(f"{path}: lambda.{function} must be an object")
    n = get(f, "invocations", f"lambda.{function}")
    ms = get(f, "avg_duration_ms", f"lambda.{function}")
    mb = get(f, "memory_mb", f"lambda.{function}")
    invocations += n
    # Lambda bills duration in 1 ms steps.
    gb_seconds += n * math.ceil(ms) / 1000 * mb / 1024
lines["lambda requests"] = invocations * PRICES["lambda_request"]
lines["lambda compute"] = gb_seconds * PRICES["lambda_gb_second_arm64"]
lines["api gateway"] = number(counts.get("http_api_requests", 0), "http_api_requests") * PRICES["http_api_request"]
d = section("dynamodb")
lines["dynamodb reads"] = get(d, "read_units", "dynamodb") * PRICES["dynamodb_read_unit"]
lines["dynamodb writes"] = get(d, "write_units", "dynamodb") * PRICES["dynamodb_write_unit"]
lines["sqs"] = get(section("sqs"), "requests", "sqs") * PRICES["sqs_request"]
s3 = section("s3")
lines["s3 requests"] = (get(s3, "put_requests", "s3") * PRICES["s3_put_request"]
                        + get(s3, "get_requests", "s3") * PRICES["s3_get_request"])
v = section("s3_vectors")
lines["s3 vectors writes"] = get(v, "put_bytes", "s3_vectors") / GB * PRICES["s3_vectors_put_gb"]
lines["s3 vectors requests"] = (get(v, "query_requests", "s3_vectors") * PRICES["s3_vectors_query_request"]
                                + get(v, "query_bytes_processed", "s3_vectors") / 1024 ** 4 * PRICES["s3_vectors_query_tb"]
                                + get(v, "other_requests", "s3_vectors") * PRICES["s3_vectors_other_request"])
m = section("model")
if "cost_usd" in m:
    lines["model tokens"] = get(m, "cost_usd", "model")
else:
    lines["model tokens"] = (get(m, "input_tokens", "model") * get(m, "price_in", "model")
                             + get(m, "output_tokens", "model") * get(m, "price_out", "model")) / 1e6
storage = (get(d, "stored_bytes", "dynamodb") / GB * PRICES["dynamodb_gb_month"]
           + get(s3, "stored_bytes", "s3") / GB * PRICES["s3_gb_month"]
           + get(v, "stored_bytes", "s3_vectors") / GB * PRICES["s3_vectors_gb_month"])

scale = 1000 / documents
per_1000 = {k: round(x * scale, 6) for k, x in lines.items()}
total = round(sum(lines.values()) * scale, 6)
storage_1000 = round(storage * scale, 6)
if as_json:
    print(json.dumps({"documents_measured": documents, "per_1000_documents": per_1000,
                      "total_usd_per_1000_documents": total,
                      "storage_usd_per_month_per_1000_documents": storage_1000,
                      "prices": PRICES, "prices_checked": "2026-12-01",
                      "source": counts.get("source", "")}, indent=2))
else:
    print(f"AWS cost per 1,000 documents (us-east-1, arm64, list prices of 2026-12-01), from {documents:g} documents")
    if counts.get("source"):
        print(f"counts: {counts['source']}")
    for k, x in per_1000.items():
        print(f"  {k:<22} ${x:>12.6f}")
    print(f"  {'storage, per month':<22} ${storage_1000:>12.6f}")
    print(f"total: ${total:.4f} per 1,000 documents (plus ${storage_1000:.4f} a month to keep them)")
EOF
