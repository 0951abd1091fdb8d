"""The demo's stage runner: commands of a stage in parallel, a command's followers right after it, and a
failure that stops the stage. Real processes (tiny Python one-liners stand in for the user commands)."""

import sys

import pytest

from demo import run as demo_run


@pytest.fixture
def python_commands(monkeypatch):
    """Each Command's args become the code of a `python -c` process instead of a console script."""
    monkeypatch.setattr(demo_run, "command_line", lambda name, args: [sys.executable, "-c", *args])


def _append(path, word, sleep=0.0):
    return f"import time; time.sleep({sleep}); open({str(path)!r}, 'a').write({word!r} + '\\n')"


def test_followers_run_after_their_command_in_its_slot(tmp_path, python_commands):
    log = tmp_path / "order.txt"
    stages = demo_run.Stages(total=1)
    long = demo_run.Command("python", [_append(log, "long", sleep=1.5)], "long")
    short = demo_run.Command("python", [_append(log, "short")], "short",
                             then=(demo_run.Command("python", [_append(log, "after short")], "after short"),))
    stages.run([long, short], parallel=2)
    # The follower did not wait for the stage: it ran between the short command and the long one's end.
    assert log.read_text().splitlines() == ["short", "after short", "long"]
    assert set(stages.seconds) == {"long", "short", "after short"}
    assert stages.seconds["long"] >= 1.5


def test_a_failed_command_skips_its_followers_and_names_itself(tmp_path, python_commands):
    log = tmp_path / "order.txt"
    stages = demo_run.Stages(total=1)
    failing = demo_run.Command("python", ["import sys; sys.exit(3)"], "broken step",
                               then=(demo_run.Command("python", [_append(log, "follower")], "follower"),))
    queued = demo_run.Command("python", [_append(log, "queued")], "queued")
    with pytest.raises(RuntimeError, match="'broken step' failed: python exited with 3"):
        stages.run([failing, queued], parallel=1)
    assert not log.exists()  # neither the follower nor the command queued behind the failure ran
