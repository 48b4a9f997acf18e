"""The tray process (``hflocal tray``). Imports ``ipc``, never ``agent``.

- ``supervisor``: starts, pings, restarts (``restart_policy``) and stops the worker; no pystray.
- ``state``: the ``Snapshot`` and the pure ``reduce`` fed by replies, events and ``observations``.
- ``menu``: the menu as comparable data built from a snapshot; ``icons``: Pillow icons with badges.
- ``controller``: owns the snapshot, the worker I/O and the menu actions (toolkit-free).
- ``tray``: the pystray view; ``notify``: desktop notifications; ``app``: ``run_tray()``.
"""
