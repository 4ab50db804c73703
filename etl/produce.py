"""``python -m etl.produce``: write JSON Lines records to a Kafka topic (:mod:`etl.kafka.produce`)."""
from etl.core.errors import run_main
from etl.kafka.produce import main

if __name__ == "__main__":
    run_main(main)
