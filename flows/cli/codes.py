"""The command line's exit codes (standard library only: the CLI imports them before anything heavy)."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_GATE_FAILED", "EXIT_INTERRUPTED"]

EXIT_ERROR = 1  # anything else, still one line ("unexpected": a bug of ours)
EXIT_BAD_INPUT = 2  # bad input: one line naming the problem and the fix
EXIT_GATE_FAILED = 3  # converted and registered, a gate failed: the alias did not move
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT, at any moment
