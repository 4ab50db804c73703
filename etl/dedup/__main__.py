"""``python -m etl.dedup``: the dedup stage, run by the local executor."""
from etl.core.errors import run_main
from etl.dedup.cluster import main

run_main(main)
