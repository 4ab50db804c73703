"""``python -m shards``: see shards/cli.py."""
from etl.core.errors import run_main
from shards.cli import main

run_main(main, prog="shards")
