"""``python -m etl.quality_model [train] ...``: the filter stage (local executor), or ``train``."""
from etl.core.errors import run_main
from etl.quality_model.cli import main

run_main(main)
