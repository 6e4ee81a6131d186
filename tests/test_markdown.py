"""study.markdown: the one Markdown table renderer, and the command tables that print through it."""
from study.markdown import markdown_table
from study.reproduce.compare import side_by_side


def test_a_pipe_table_of_the_cells_as_given():
    assert markdown_table(["a", "b"], [["1", ""], ["x y", "—"]]) == "| a | b |\n|---|---|\n| 1 |  |\n| x y | — |"
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_reproduce_prints_its_side_by_side_as_such_a_table():
    recorded = {"train_loss": {1: 0.5, 2: 0.25}, "test_acc": {1: 0.75}, "beta": {1: 1.0, 2: 2.0}}
    here = [{"epoch": 1, "train_loss": 0.5, "test_acc": 0.875, "beta": 1.0},
            {"epoch": 2, "train_loss": 0.25, "test_acc": 0.5, "beta": 2.5}]
    assert side_by_side(recorded, here).splitlines() == [
        "| epoch | train_loss recorded | train_loss here | test_acc recorded | test_acc here "
        "| largest Δ of all metrics |",
        "|---|---|---|---|---|---|",
        "| 1 | 0.500000 | 0.500000 | 0.750000 | 0.875000 | 1.25e-01 |",
        "| 2 | 0.250000 | 0.250000 | nan | 0.500000 | 5.00e-01 |"]
