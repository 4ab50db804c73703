"""Replay JSON Lines files into a Kafka topic, one message per line (bytes sent verbatim).

    python -m etl.produce --bootstrap-servers HOST:PORT --topic T --input FILE.jsonl [FILE ...]

Lines are sent as they are, so malformed lines reach the topic too (the ingest's
dead-letter output is where they should end up).  Messages are spread over partitions
round-robin unless ``--key-by-id`` keys them by their ``id`` field.
"""
from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from etl.core.cli import ArgumentParser
from etl.core.errors import run_main


def iter_lines(paths: list[str]):
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line


def message_key(line: bytes) -> bytes | None:
    """The record's id as the message key, or None when the line has none."""
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return str(rec["id"]).encode() if isinstance(rec, dict) and rec.get("id") is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m etl.produce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, help="topic to send to")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE", help="JSON Lines files; each non-blank line is one message")
    parser.add_argument("--key-by-id", action="store_true", help="key messages by their id field (same id, same partition)")
    parser.add_argument("--partitions", type=int, default=None, help="spread round-robin over this many partitions (default: the producer's partitioner)")
    args = parser.parse_args(argv)
    from kafka import KafkaProducer

    from etl.kafka.ingest import broker_errors

    with broker_errors(args.bootstrap_servers):
        producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all", linger_ms=5)
    count = 0
    for i, line in enumerate(tqdm(iter_lines(args.input), desc="produce", unit="msg", mininterval=1.0)):
        key = message_key(line) if args.key_by_id else None
        partition = None if args.partitions is None or args.key_by_id else i % args.partitions
        producer.send(args.topic, line, key=key, partition=partition)
        count += 1
    producer.flush()
    producer.close()
    print(json.dumps({"event": "produced", "topic": args.topic, "messages": count}), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
