"""A local Hugging Face Hub for tests: the official huggingface_hub client works against it unchanged.

* ``HubRepos(root)`` writes repositories to disk (``storage.py``);
* ``HubServer(root)`` serves them from a thread (``server.py``); ``python -m tests.hubserver`` or
  ``HubProcess(root)`` from a subprocess that tests may kill;
* ``HubControl(url)`` injects faults and reads byte accounting over HTTP (``control.py``);
* ``fixtures.py`` has pytest fixtures (``hub_repos``, ``hub``, ``hf_env``).
"""

from .control import HubControl
from .faults import Fault
from .process import HubProcess
from .server import DEFAULT_TOKEN, HubServer
from .storage import DEFAULT_LFS_PATTERNS, FileEntry, HubRepos, Repo, git_blob_sha1

__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "DEFAULT_TOKEN",
    "Fault",
    "FileEntry",
    "HubControl",
    "HubProcess",
    "HubRepos",
    "HubServer",
    "Repo",
    "git_blob_sha1",
]
