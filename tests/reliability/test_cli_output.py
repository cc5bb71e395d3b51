"""Output a person can follow when stdout is a file or a pipe."""

from __future__ import annotations

import io

from graftkit.progress import LineProgress


def test_plain_progress_lines_carry_elapsed_time_and_eta():
    out = io.StringIO()
    lines = LineProgress(every=0.0, stream=out)  # every update is due
    task = lines.add_task("phase 3 epoch 2", total=4, info="")
    lines.update(task, advance=1, info="loss 1.2345")
    lines.update(task, advance=3, info="loss 0.5")
    lines.update(task, advance=1)  # past the end: no second "done" line
    lines.remove_task(task)
    printed = out.getvalue().splitlines()
    assert len(printed) == 2
    assert printed[0].startswith("phase 3 epoch 2: 1/4 elapsed 0:00:00 eta ")
    assert printed[0].endswith("loss 1.2345")
    assert printed[1] == "phase 3 epoch 2: 4/4 elapsed 0:00:00  loss 0.5"


def test_a_running_step_prints_only_every_so_often():
    out = io.StringIO()
    lines = LineProgress(every=3600.0, stream=out)
    task = lines.add_task("language prior", total=500)
    for step in range(1, 100):
        lines.update(task, completed=step)
    assert out.getvalue() == ""  # nothing due yet: no line per step
    lines.update(task, completed=500)
    assert out.getvalue().startswith("language prior: 500/500 elapsed")


def test_plugins_table_is_not_cut_at_80_columns_off_a_terminal(capsys):
    from graftkit.cli import main
    from graftkit.plugins import describe

    assert main(["plugins"]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) > 80
    for row in describe():
        for kind, names in row["provides"].items():
            assert f"{kind}: {', '.join(names)}" in printed  # every cell whole, on one line
