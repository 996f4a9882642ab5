"""The ``rnode-queue`` command (also ``python -m rnode_queue``): ``demo`` (the default),
``version``, ``worker APP`` and the admin commands; see ``rnode-queue --help``."""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
