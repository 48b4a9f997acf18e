"""Helpers both processes (and the CLI) use: where state lives, durable file writes, what counts as loopback.

The package imports nothing of ours and no framework, so ``agent``, ``ui``, ``ipc`` and ``cli`` may all
import it without crossing a process boundary.
"""
