"""Start at login on each OS (``autostart``) and the command lines it writes (``commands``)."""
