"""Interrupting training: SIGINT exits 130 and SIGTERM 143, after saving latest/ at the step
reached, with a one-line message and no traceback; a second SIGINT exits at once, safely."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import LONG_RUN

from charnn.checkpoint import load_checkpoint


def _interrupt(cmd: list[str], env: dict[str, str], signals: list[int]) -> tuple[int, str]:
    """Start training, wait for its first progress line (it is inside the loop), send ``signals``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("step "):
                break
        else:
            pytest.fail("training ended before printing progress: " + "".join(seen))
        for sig in signals:
            proc.send_signal(sig)
        rest = proc.stderr.read()
        return proc.wait(timeout=60), "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_latest_and_exits_with_its_code(
    sig: int, code: int, tmp_path: Path, corpus_file: Path, cli_command, cli_env, cli_inprocess
) -> None:
    out = tmp_path / "run"
    rc, stderr = _interrupt(cli_command("train", corpus_file, "--out", out, *LONG_RUN), cli_env(), [sig])
    assert rc == code, stderr
    assert "Traceback" not in stderr
    # A stop the user asked for, not an error, with the command that continues the run.
    assert "error" not in stderr
    pattern = r"^charnn: stopped at step (\d+); saved (.+); continue with: charnn train --resume (.+)$"
    match = re.search(pattern, stderr, re.M)
    assert match, stderr
    assert match.group(3) == str(out)
    step = int(match.group(1))
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["progress"]["step"] == step > 0
    info = cli_inprocess("info", "-c", out, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["step"] == step
    # And the interrupted run continues from there.
    assert load_checkpoint(out).step == step


def test_second_sigint_exits_at_once_leaving_a_loadable_checkpoint(
    tmp_path: Path, corpus_file: Path, cli_command, cli_env
) -> None:
    out = tmp_path / "run"
    cmd = cli_command("train", corpus_file, "--out", out, *LONG_RUN)
    rc, stderr = _interrupt(cmd, cli_env(), [signal.SIGINT, signal.SIGINT])
    assert rc == 130, stderr
    assert "Traceback" not in stderr
    load_checkpoint(out)  # the step-0 save or the interrupt's save, never a torn one
