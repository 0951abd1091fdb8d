"""Rank selection: energy, rank ratio and the greedy latency budget, against hand computations."""

import keras
import numpy as np
import pytest
from factorize_fixtures import tiny_model

from compress import factorize, rank_selection


def test_rank_for_energy_by_hand():
    values = np.array([4.0, 2.0, 1.0])  # squares 16, 4, 1: cumulative energy 16/21 = 0.762, 20/21 = 0.952, 1
    assert rank_selection.rank_for_energy(values, 0.7) == 1
    assert rank_selection.rank_for_energy(values, 0.76) == 1
    assert rank_selection.rank_for_energy(values, 0.9) == 2
    assert rank_selection.rank_for_energy(values, 0.96) == 3
    assert rank_selection.rank_for_energy(values, 1.0) == 3
    with pytest.raises(ValueError, match="--energy must be in"):
        rank_selection.rank_for_energy(values, 1.5)


def test_rank_ratio_and_layers_that_would_not_save_are_skipped():
    model = tiny_model()
    layers = factorize.find_factorizable_layers(model)
    selection = rank_selection.select_by_ratio(layers, 0.25)
    # pw1 16x24 -> 4 (saves: 160 < 384); pw2 24x32 -> 6 (336 < 768); logits 32x10 -> round(2.5) = 2 (84 < 320)
    assert selection.ranks == {"pw1": 4, "pw2": 6, "logits": 2}
    selection = rank_selection.select_by_ratio(layers, 0.75)
    # pw1 -> 12 (480 >= 384: skipped), pw2 -> 18 (1008 >= 768: skipped), logits -> round(7.5) = 8 (336 >= 320)
    assert selection.ranks == {} and set(selection.skipped) == {"pw1", "pw2", "logits"}
    assert "saves nothing" in selection.skipped["pw1"]


def test_select_by_energy_uses_each_layers_spectrum():
    model = tiny_model()
    layers = factorize.find_factorizable_layers(model)
    selection = rank_selection.select_by_energy(model, layers, 0.6)
    for name, rank in selection.ranks.items():
        values = factorize.singular_values(model.get_layer(name).kernel.numpy())
        kept = np.cumsum(values**2) / np.sum(values**2)
        assert kept[rank - 1] >= 0.6 > (kept[rank - 2] if rank > 1 else 0.0)


def _dense_with_spectrum(values, seed):
    """An 8x8 kernel U diag(values) V^T with random orthogonal U, V."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    right, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    return (left * np.asarray(values)) @ right.T


def _two_layer_model():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="steep")(inputs)
    outputs = keras.layers.Dense(8, name="flat")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("steep").kernel.assign(_dense_with_spectrum([10, 1, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1], 0))
    model.get_layer("flat").kernel.assign(_dense_with_spectrum([1.0] * 8, 1))
    return model


def test_latency_budget_is_greedy_by_ms_saved_per_error():
    model = _two_layer_model()
    layers = factorize.find_factorizable_layers(model)
    grid = (0.3, 0.2)
    # steep: rank 1 at both energies, saves 1 ms * (1 - 16/64) = 0.75 ms with a tiny error.
    # flat (all s_i = 1): energy 0.3 -> rank 3 (saves 0.25 ms), 0.2 -> rank 2 (saves 0.5 ms), large errors.
    layer_ms = {"steep": 1.0, "flat": 1.0}
    selection = rank_selection.select_for_latency(model, layers, layer_ms, 3.0, 2.5, grid)
    assert selection.ranks == {"steep": 1}
    assert selection.estimated_ms == pytest.approx(2.25)
    selection = rank_selection.select_for_latency(model, layers, layer_ms, 3.0, 2.0, grid)
    assert selection.ranks == {"steep": 1, "flat": 3}
    assert selection.estimated_ms_saved == pytest.approx({"steep": 0.75, "flat": 0.25})
    selection = rank_selection.select_for_latency(model, layers, layer_ms, 3.0, 1.8, grid)
    assert selection.ranks == {"steep": 1, "flat": 2} and selection.estimated_ms == pytest.approx(1.75)
    with pytest.raises(rank_selection.BudgetError, match=r"cannot be met.*estimated to reach 1\.750 ms"):
        rank_selection.select_for_latency(model, layers, layer_ms, 3.0, 1.7, grid)


def test_layers_without_a_profiled_op_are_not_candidates():
    model = _two_layer_model()
    layers = factorize.find_factorizable_layers(model)
    selection = rank_selection.select_for_latency(model, layers, {"steep": 1.0}, 3.0, 2.5, (0.3, 0.2))
    assert selection.ranks == {"steep": 1} and "no op" in selection.skipped["flat"]


def test_op_overhead_is_charged_to_every_factorized_layer():
    model = _two_layer_model()
    layers = factorize.find_factorizable_layers(model)
    # overhead 0.5 ms: steep saves 0.75 - 0.5; flat's 0.25 and 0.5 ms are eaten by its extra op.
    selection = rank_selection.select_for_latency(model, layers, {"steep": 1.0, "flat": 1.0}, 3.0, 2.8, (0.3, 0.2),
                                                  op_overhead_ms=0.5)
    assert selection.ranks == {"steep": 1} and selection.estimated_ms == pytest.approx(2.75)
    assert selection.op_overhead_ms == 0.5
    assert "no candidate rank saves time" in selection.skipped["flat"]
    assert rank_selection.estimated_saving_ms(layers[0], 1.0, 1, op_overhead_ms=0.5) == pytest.approx(0.25)


def test_calibrated_overhead_spreads_the_miss_over_the_factorized_layers():
    selection = rank_selection.Selection({"a": 1, "b": 2}, {}, {"a": 0.3, "b": 0.2}, model_ms=3.0, target_ms=2.5,
                                         op_overhead_ms=0.1)
    assert selection.estimated_ms == pytest.approx(2.5)
    assert rank_selection.calibrated_overhead_ms(selection, 2.9) == pytest.approx(0.1 + 0.4 / 2)
    assert rank_selection.calibrated_overhead_ms(selection, 1.0) == 0.0  # faster than estimated: not negative


def _true_latency(selection, model_ms=3.0, true_overhead=0.3):
    """What a machine whose extra ops really cost 0.3 ms would measure (savings as with overhead 0)."""
    saved_without_overhead = {name: ms + selection.op_overhead_ms for name, ms in selection.estimated_ms_saved.items()}
    return model_ms - sum(saved - true_overhead for saved in saved_without_overhead.values())


@pytest.mark.parametrize("target,overheads,ranks,measured,extra_lines", [
    # round 1 trusts MACs (steep only, estimated 2.25, measured 2.55); round 2, charged 0.3 ms per op,
    # adds flat at rank 2 and measures 2.35 <= 2.5.
    (2.5, [0.0, 0.3], {"steep": 1, "flat": 2}, 2.35, 0),
    # 2.3 is out of reach once the overhead is known: round 2 is impossible, round 1 (the fastest) is kept.
    (2.3, [0.0], {"steep": 1}, 2.55, 1),
])
def test_selection_rounds_reselect_with_the_measured_overhead(target, overheads, ranks, measured, extra_lines):
    from compress import factorize_job

    model = _two_layer_model()
    layers = factorize.find_factorizable_layers(model)
    select = lambda overhead: rank_selection.select_for_latency(  # noqa: E731
        model, layers, {"steep": 1.0, "flat": 1.0}, 3.0, target, (0.3, 0.2), op_overhead_ms=overhead)
    lines = []
    selection, attempts = factorize_job.calibrate_selection(select, _true_latency, target, 3, lines.append)
    assert selection.ranks == ranks
    assert [attempt["op_overhead_ms"] for attempt in attempts] == pytest.approx(overheads)
    assert _true_latency(selection) == pytest.approx(measured)
    assert attempts[-1]["measured_ms"] == pytest.approx(measured)
    assert len(lines) == len(attempts) + extra_lines


def test_selection_rounds_keep_the_fastest_when_none_meets_the_budget():
    from compress import factorize_job

    # Three different selections, none within 1.0 ms; the second one measured fastest.
    selections = [rank_selection.Selection({"a": 4}, {}, {"a": 0.5}, 3.0, 1.0),
                  rank_selection.Selection({"a": 2}, {}, {"a": 0.9}, 3.0, 1.0, 0.1),
                  rank_selection.Selection({"a": 1}, {}, {"a": 1.2}, 3.0, 1.0, 0.2)]
    measured = {4: 2.8, 2: 2.4, 1: 2.6}
    calls = iter(selections)
    lines = []
    selection, attempts = factorize_job.calibrate_selection(lambda overhead: next(calls),
                                                            lambda chosen: measured[chosen.ranks["a"]], 1.0, 3,
                                                            lines.append)
    assert selection is selections[1]
    assert [attempt["measured_ms"] for attempt in attempts] == [2.8, 2.4, 2.6]
    assert lines[-1].startswith("no round met the budget of 1.0000 ms; keeping round 2 (2.4000 ms")


def test_selection_rounds_stop_when_a_reselection_repeats_itself():
    from compress import factorize_job

    same = rank_selection.Selection({"a": 2}, {}, {"a": 0.5}, 3.0, 1.0)
    timed = []
    lines = []
    selection, attempts = factorize_job.calibrate_selection(lambda overhead: same,
                                                            lambda chosen: timed.append(chosen) or 2.9, 1.0, 3,
                                                            lines.append)
    assert selection is same and len(timed) == 1 and len(attempts) == 1  # timed once, not three times
    assert "the ranks of an earlier round; keeping round 1" in lines[-1]
