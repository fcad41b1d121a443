"""``python -m quantstage.flows.cli``: the ``quantstage`` command."""

from quantstage.flows.cli import run

run()
