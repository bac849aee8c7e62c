"""``python -m rationale_kit``: the command line (:mod:`rationale_kit.cli`)."""
import sys

from rationale_kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
