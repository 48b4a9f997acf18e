"""The ``~/.local/bin/hflocal`` launcher the quickstart writes: run from another folder and a shell
without the venv, it is the venv's hflocal, with the data root the quickstart used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from installers.launcher import install_launcher, main

VENV_HFLOCAL = Path(sys.executable).parent / "hflocal"
VERSION = subprocess.run([str(VENV_HFLOCAL), "--version"], capture_output=True, text=True, check=True).stdout


def clean_env(tmp_path: Path) -> dict[str, str]:
    """A shell's environment with neither the venv nor HFLOCAL_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("HFLOCAL_HOME", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    env["HOME"] = str(tmp_path / "user")
    return env


def test_the_launcher_runs_the_venvs_hflocal_from_anywhere(tmp_path: Path) -> None:
    bin_dir = tmp_path / "user" / ".local" / "bin"
    result = install_launcher(VENV_HFLOCAL, bin_dir, path_var="/usr/bin:/bin")
    assert result.written and result.path == bin_dir / "hflocal" and not result.on_path
    assert result.path_line == f'export PATH="{bin_dir}:$PATH"'
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    ran = subprocess.run(["hflocal", "--version"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, VERSION), ran.stderr
    assert install_launcher(VENV_HFLOCAL, bin_dir, path_var=f"{bin_dir}:/bin").on_path


def test_the_quickstarts_data_root_is_the_default(tmp_path: Path) -> None:
    home = tmp_path / "odd $home \"x\""
    launcher = install_launcher(VENV_HFLOCAL, tmp_path / "bin", home=str(home)).path
    env = clean_env(tmp_path)
    ran = subprocess.run([str(launcher), "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert f"no hflocal agent is running for {home}" in json.loads(ran.stderr)["error"]["message"]
    env["HFLOCAL_HOME"] = str(tmp_path / "mine")  # the caller's own choice wins
    ran = subprocess.run([str(launcher), "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert f"running for {tmp_path / 'mine'}" in json.loads(ran.stderr)["error"]["message"]


def test_another_hflocal_there_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hflocal").write_text("#!/bin/sh\necho pipx's hflocal\n")
    assert main([str(VENV_HFLOCAL), "--bin-dir", str(bin_dir)]) == 0
    assert (bin_dir / "hflocal").read_text() == "#!/bin/sh\necho pipx's hflocal\n"
    out = capsys.readouterr().out
    assert "is not hflocal's launcher: left as it is" in out


def test_the_quickstart_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir = tmp_path / "bin"
    assert main([str(VENV_HFLOCAL), "--bin-dir", str(bin_dir)]) == 0
    assert main([str(VENV_HFLOCAL), "--bin-dir", str(bin_dir)]) == 0  # its own launcher is rewritten
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"`hflocal` now runs {VENV_HFLOCAL.resolve()} (launcher {bin_dir / 'hflocal'})"
    assert lines[1].startswith(f"{bin_dir} is not on your PATH")  # a fresh temporary folder never is
    assert lines[2] == f'  export PATH="{bin_dir}:$PATH"'
