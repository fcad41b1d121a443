"""``python -m quantstage.flows.cli``: the ``quantstage`` command."""

import sys

from quantstage.flows.cli import main

sys.exit(main())
