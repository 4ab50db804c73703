"""``python -m shards``: see shards/cli.py."""
import sys

from shards.cli import main

sys.exit(main())
