"""The settings page served by the worker at ``/``: static HTML, CSS and JavaScript (no build step)."""
