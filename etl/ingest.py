"""``python -m etl.ingest``: the Kafka ingest (:mod:`etl.kafka.ingest`)."""
from etl.core.errors import run_main
from etl.kafka.ingest import main

if __name__ == "__main__":
    run_main(main)
