"""The "Run all" switch in a real IPython shell: a `#| slow` cell runs only when RUN_SLOW is true (or nbdev_test
--flags slow runs it, or RMSECRETS_RUN_SLOW=1)."""
import pytest
from IPython.core.interactiveshell import InteractiveShell

from rmsecrets.core import REAL_SKIPPED, SLOW_SKIPPED, guard_slow_cells


@pytest.fixture
def shell(monkeypatch, capsys):
    monkeypatch.delenv("IN_TEST", raising=False)
    monkeypatch.delenv("RMSECRETS_RUN_SLOW", raising=False)
    monkeypatch.delenv("RMSECRETS_REAL_MODEL", raising=False)
    sh = InteractiveShell.instance()
    sh.run_cell('RUN_SLOW = False\nran = []')
    guard_slow_cells(sh)
    yield sh
    sh.input_transformers_cleanup[:] = [t for t in sh.input_transformers_cleanup if getattr(t, "__name__", "") != "_skip_slow"]


def test_slow_cells_wait_for_the_switch(shell, capsys, monkeypatch):
    shell.run_cell("#| slow\nran.append('slow')")
    assert shell.user_ns["ran"] == [] and SLOW_SKIPPED in capsys.readouterr().out
    shell.run_cell("ran.append('fast')")                           # every other cell runs as written
    shell.run_cell("RUN_SLOW = True")
    shell.run_cell("#| slow\nran.append('switched on')")
    shell.run_cell("RUN_SLOW = False")
    monkeypatch.setenv("RMSECRETS_RUN_SLOW", "1")                  # make notebooks SLOW=1
    shell.run_cell("#| slow\nran.append('make notebooks')")
    monkeypatch.delenv("RMSECRETS_RUN_SLOW")
    monkeypatch.setenv("IN_TEST", "1")                             # nbdev_test sends slow cells only with --flags slow
    shell.run_cell("#| export, slow\nran.append('nbdev_test')")
    assert shell.user_ns["ran"] == ["fast", "switched on", "make notebooks", "nbdev_test"]


def test_a_failing_slow_cell_still_fails(shell):
    shell.run_cell("RUN_SLOW = True")
    assert not shell.run_cell("#| slow\n1 / 0").success


def test_real_model_cells_wait_for_their_own_switch(shell, capsys, monkeypatch):
    shell.run_cell("RUN_SLOW = True\nREAL_MODEL = False")
    shell.run_cell("#| real\nran.append('real, slow on')")              # RUN_SLOW does not start a real-model section
    assert shell.user_ns["ran"] == [] and REAL_SKIPPED in capsys.readouterr().out
    shell.run_cell("REAL_MODEL = True")
    shell.run_cell("#| real\nran.append('switched on')")
    shell.run_cell("REAL_MODEL = False")
    monkeypatch.setenv("RMSECRETS_REAL_MODEL", "1")                       # make notebooks REAL=1
    shell.run_cell("#| real\nran.append('make notebooks')")
    assert shell.user_ns["ran"] == ["switched on", "make notebooks"]
