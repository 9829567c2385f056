"""``python -m drex``: the same as the ``drex`` command."""

import sys

from drex.cli import main

sys.exit(main())
