"""The demo's stage runner: commands of a stage in parallel, a command's followers right after it, and a
failure that stops the stage. Real processes (tiny Python one-liners stand in for the user commands)."""

import sys
import time

import pytest

from demo import run as demo_run


@pytest.fixture
def python_commands(monkeypatch):
    """Each Command's args become the code of a `python -c` process instead of a console script."""
    monkeypatch.setattr(demo_run, "command_line", lambda name, args: [sys.executable, "-c", *args])


def _append(path, word, sleep=0.0):
    return f"import time; time.sleep({sleep}); open({str(path)!r}, 'a').write({word!r} + '\\n')"


def _wait_for(path, word, timeout=60.0):
    """Code that polls `path` until it holds the line `word` (or gives up after `timeout` seconds)."""
    return (f"import os, time\nend = time.time() + {timeout}\n"
            f"while time.time() < end and not (os.path.exists({str(path)!r}) and "
            f"{word!r} in open({str(path)!r}).read().splitlines()):\n    time.sleep(0.05)\n")


def test_followers_run_after_their_command_without_waiting_for_the_stage(tmp_path, python_commands):
    log = tmp_path / "order.txt"
    stages = demo_run.Stages(total=1)
    # The long command ends only once the follower has written (or after 60 s, and then the order is wrong).
    long = demo_run.Command("python", [_wait_for(log, "after short") + _append(log, "long")], "long")
    short = demo_run.Command("python", [_append(log, "short")], "short",
                             then=(demo_run.Command("python", [_append(log, "after short")], "after short"),))
    stages.run([long, short], parallel=2)
    assert log.read_text().splitlines() == ["short", "after short", "long"]
    assert set(stages.seconds) == {"long", "short", "after short"}


def test_a_failed_command_skips_its_followers_and_names_itself(tmp_path, python_commands):
    log = tmp_path / "order.txt"
    stages = demo_run.Stages(total=1)
    failing = demo_run.Command("python", ["import sys; sys.exit(3)"], "broken step",
                               then=(demo_run.Command("python", [_append(log, "follower")], "follower"),))
    queued = demo_run.Command("python", [_append(log, "queued")], "queued")
    with pytest.raises(RuntimeError, match="'broken step' failed: python exited with 3"):
        stages.run([failing, queued], parallel=1)
    assert not log.exists()  # neither the follower nor the command queued behind the failure ran
    # The next stage on the same runner starts afresh.
    stages.run([queued])
    assert log.read_text().splitlines() == ["queued"]


def test_a_failure_terminates_the_running_commands_instead_of_waiting_for_them(tmp_path, python_commands):
    log = tmp_path / "order.txt"
    stages = demo_run.Stages(total=1)
    # Submitted first, so a runner that waits on the commands in order would sit out its 120 s.
    slow = demo_run.Command("python", [_append(log, "slow", sleep=120)], "slow")
    failing = demo_run.Command("python", ["import sys, time; time.sleep(1); sys.exit(3)"], "broken step")
    began = time.perf_counter()
    with pytest.raises(RuntimeError, match="'broken step' failed"):
        stages.run([slow, failing], parallel=2)
    assert time.perf_counter() - began < 60
    assert not log.exists()  # the slow command was terminated before it wrote
