"""The figures a run writes, read through matplotlib's objects."""

from training.plots import history_figures

ROW = {"train_loss": 2.1, "train_top1": 20.0, "train_top5": 60.0, "valid_loss": 2.3,
       "valid_top1": 18.0, "valid_top5": 55.0}  # fmt: skip


def test_one_epoch_plots_have_whole_epochs_linear_axes_and_a_title():
    accuracy, loss = history_figures([{"epoch": 1, **ROW}], "fishnet99 (width 0.25), run")
    for figure in (accuracy, loss):
        (ax,) = figure.axes
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        assert "fishnet99 (width 0.25), run" in ax.get_title()
    assert accuracy.axes[0].get_ylim() == (0, 100)
    (loss_ax,) = loss.axes
    assert loss_ax.get_ylim()[1] >= max(ROW["train_loss"], ROW["valid_loss"])


def test_test_curves_appear_when_the_run_scores_the_test_split():
    rows = [{"epoch": e, **ROW, "test_loss": 2.0, "test_top1": 25.0, "test_top5": 70.0}
            for e in (1, 2, 3)]  # fmt: skip
    accuracy, _ = history_figures(rows, "t")
    labels = [line.get_label() for line in accuracy.axes[0].get_lines()]
    assert "test top-1" in labels and "valid top-1" in labels


def test_a_split_scored_in_some_epochs_only(tmp_path):
    """--report-test dropped on --resume: the first epoch has test scores, the second not."""
    from training.plots import write_history

    test = {"test_loss": 2.0, "test_top1": 25.0, "test_top5": 70.0}
    rows = [{"epoch": 1, **ROW, **test}, {"epoch": 2, **ROW}, {"epoch": 3, **ROW, **test}]
    write_history(rows, tmp_path, "run $\\frac$")  # mathtext that cannot be drawn, too
    header, *lines = (tmp_path / "history.csv").read_text().splitlines()
    assert header.split(",")[-3:] == list(test) and lines[1].endswith(",,,")
    accuracy, _ = history_figures(rows, "t")
    (test_top1,) = [
        line for line in accuracy.axes[0].get_lines() if line.get_label() == "test top-1"
    ]
    assert list(test_top1.get_ydata())[::2] == [25.0, 25.0]
