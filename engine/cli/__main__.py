"""``python -m engine.cli``: the ``freesolo`` command."""

import sys

from engine.cli import main

sys.exit(main())
