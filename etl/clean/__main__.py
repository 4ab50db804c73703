"""``python -m etl.clean``: the cleaning stage, run by the local executor."""
from etl.clean.pipeline import main
from etl.core.errors import run_main

run_main(main)
