"""The run's plots read as a person expects."""

import fedsq_hf.plotting as plotting
from fedsq_hf.plotting import plot_metrics, plot_partition


def test_plots_read_as_a_person_expects(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"round": r, "eval_loss": 1.0 / r, "eval_accuracy": 0.1 * r} for r in (1, 2, 3)]
    plot_metrics(history, str(tmp_path / "m.png"), best_round=3)
    axes = figures[-1].axes
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy"]
    assert all(float(t).is_integer() for ax in axes for t in ax.get_xticks())
    plot_partition({"samples_per_client": [3, 5], "label_histogram": [[3, 0], [1, 4]]}, str(tmp_path / "p.png"),
                   label_names=["cat", "dog"])
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 (3)", "1 (5)"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
