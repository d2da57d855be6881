"""tqpatch.ui: the one subprocess runner, its tail, the step and progress displays."""

import sys
import time

import pytest

from tqpatch import ui
from tqpatch.errors import TqpatchError

PY = sys.executable


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_streamed_to_log_and_callback(tmp_path):
    log = tmp_path / "run.log"
    seen = []
    r = ui.run(_py("import sys; print('one'); print('two', file=sys.stderr, flush=True); print('three')"),
               log=log, on_line=seen.append)
    assert r.returncode == 0 and not r.timed_out
    assert sorted(seen) == ["one\n", "three\n", "two\n"] and r.stdout == "".join(seen)
    text = log.read_text()
    assert text.startswith("$ " + PY) and "one\n" in text and "two\n" in text
    assert text.endswith("[exit 0]\n")


def test_quiet_log_keeps_only_the_command_and_status(tmp_path):
    log = tmp_path / "run.log"
    ui.run(_py("print('se' + 'cret')"), log=log, quiet_log=True)
    text = log.read_text()
    assert "secret" not in text and text.endswith("[exit 0]\n")


def test_captured_apart_with_stdin_text_and_bytes():
    code = "import sys; d = sys.stdin.read(); print(d.upper()); print('err:' + d, file=sys.stderr)"
    r = ui.run(_py(code), input="hi", merge=False)
    assert (r.stdout, r.stderr) == ("HI\n", "err:hi\n")
    r = ui.run(_py(code), input=b"by", merge=False)
    assert (r.stdout, r.stderr) == ("BY\n", "err:by\n")
    errs = []
    ui.run(_py(code), input="x", merge=False, on_err_line=errs.append)
    assert errs == ["err:x\n"]


def test_stdin_is_closed_by_default():
    assert ui.run(_py("import sys; print(repr(sys.stdin.read()))")).stdout == "''\n"


def test_env_cwd_and_what(tmp_path):
    r = ui.run(_py("import os; print(os.environ['TQ_X'], os.getcwd())"), env={"TQ_X": "42"},
               cwd=tmp_path)
    assert r.stdout.split() == ["42", str(tmp_path)]
    with pytest.raises(TqpatchError, match=r"^the probe failed \(exit 3\)"):
        ui.run(_py("raise SystemExit(3)"), what="the probe")


def test_failure_names_the_program_status_last_lines_and_log(tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(TqpatchError) as exc:
        ui.run(_py("[print(f'line {i}') for i in range(100)]; raise SystemExit(2)"), log=log)
    msg = str(exc.value)
    assert msg.startswith(f"{ui.Path(PY).name} failed (exit 2); full log: {log}")
    assert "line 99" in msg and "line 59\n" not in msg
    assert len(msg.split("--- last lines ---\n")[1].splitlines()) == ui.TAIL_LINES
    r = ui.run(_py("raise SystemExit(2)"), check=False)
    assert r.returncode == 2


def test_failure_apart_shows_stderr():
    with pytest.raises(TqpatchError, match="the reason") as exc:
        ui.run(_py("import sys; print('noise'); sys.exit('the reason')"), merge=False)
    assert "noise" not in str(exc.value)


def test_timeout_is_one_error_or_a_flag():
    with pytest.raises(TqpatchError, match=r"did not finish within 0.5 s") as exc:
        ui.run(_py("print('started', flush=True); import time; time.sleep(30)"), timeout=0.5)
    assert "started" in str(exc.value)
    r = ui.run(_py("import time; time.sleep(30)"), timeout=0.5, check=False)
    assert r.timed_out and r.returncode != 0


def test_missing_program_is_one_clear_error(tmp_path):
    with pytest.raises(TqpatchError, match=r"^cannot run /nonexistent/tool: No such file"):
        ui.run(["/nonexistent/tool"], check=False)
    assert ui.capture(["/nonexistent/tool"]) is None


def test_capture_is_the_probe_helper():
    assert ui.capture(_py("import sys; print('out'); print('err', file=sys.stderr)")) == "out\nerr\n"
    assert ui.capture(_py("raise SystemExit(1)")) is None
    assert ui.capture(_py("import time; time.sleep(30)"), timeout=0.5) is None


def test_a_failing_callback_stops_the_program():
    def boom(line):
        raise KeyError(line)
    t0 = time.monotonic()
    with pytest.raises(KeyError):
        ui.run(_py("print('x', flush=True); import time; time.sleep(30)"), on_line=boom, timeout=20)
    with pytest.raises(KeyError):
        ui.run(_py("import sys, time; print('x', file=sys.stderr, flush=True); time.sleep(30)"),
               merge=False, on_err_line=boom, timeout=20)
    assert time.monotonic() - t0 < 10  # stopped by the callback's error, not by the timeout


def test_a_timeout_stops_what_the_program_started():
    """A grandchild holding the output pipe must not keep run() (or capture()) waiting."""
    t0 = time.monotonic()
    assert ui.capture(["sh", "-c", "sleep 30 & echo hi; sleep 30"], timeout=1) is None
    r = ui.run(["sh", "-c", "sleep 30 & echo hi; sleep 30"], timeout=1, check=False)
    assert r.timed_out and r.stdout == "hi\n"
    assert time.monotonic() - t0 < 10


def test_tail():
    text = "\n".join(f"l{i}" for i in range(100)) + "\n\n"
    assert ui.tail(text).splitlines() == [f"l{i}" for i in range(100 - ui.TAIL_LINES, 100)]
    assert ui.tail(text, 3) == "l97\nl98\nl99"
    assert ui.tail("") == "" and ui.tail(None) == ""


def test_steps_number_the_steps():
    lines = []
    steps = ui.Steps(2, echo=lines.append)
    with steps.step("check", "the tools"):
        pass
    with steps.step("build"):
        pass
    assert lines == ["[1/2] check: the tools", "[2/2] build"]


def test_progress_off_a_terminal_prints_about_every_10_percent():
    lines = []
    with ui.Progress("compile", tty=False, echo=lines.append) as p:
        for i in range(1, 201):
            p.set(i, 200)
    assert 10 <= len(lines) <= 11 and lines[-1] == "  compile: 100% (200/200)"
    lines.clear()
    with ui.Progress("model.gguf", 1000, tty=False, echo=lines.append, count=False) as p:
        for _ in range(10):
            p.update(100)
    assert lines[-1] == "  model.gguf: 100%"
    lines.clear()
    with ui.Progress("eval", 3, tty=False, echo=lines.append, ticks=False) as p:
        p.update()
        p.say("[1/3] done")
    assert lines == ["[1/3] done"]


def test_progress_on_a_terminal_uses_a_bar():
    with ui.Progress("compile", tty=True) as p:
        for i in range(1, 5):
            p.set(i, 4)
        assert p._bar is not None  # a bar, not percentage lines
        p.say("a line above the bar")
    assert p.done == 4 and p.total == 4 and p._bar is None
