"""Fine-tuning of factorized students: layerwise freezes every other weight; oneshot trains them all."""

import numpy as np
import pytest
from factorize_fixtures import tiny_model, write_tiny_records
from top1_check import independent_top1

from compress import factorize, finetune


@pytest.fixture(scope="module")
def record_glob(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("factorize_records"))


def _weights(model):
    return {variable.path: variable.numpy().copy() for variable in model.weights}


def test_layerwise_changes_only_the_factor_weights(record_glob):
    model = tiny_model()
    original = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    config = finetune.FinetuneConfig(record_glob, mode="layerwise", steps=6, batch_size=8, learning_rate=0.01,
                                     log_every=100)
    lines = []
    tuned, phases = finetune.factorize_and_finetune(model, {"pw1": 3, "pw2": 4}, config, log=lines.append)
    assert [phase["layers"] for phase in phases] == [["pw1"], ["pw2"]] and [p["steps"] for p in phases] == [3, 3]
    for layer in tuned.layers:
        if factorize.is_factor_layer(layer.name):
            continue
        for before, after in zip(original[layer.name], layer.get_weights()):
            np.testing.assert_array_equal(before, after)  # includes bn1's moving mean and variance
    # The factors did move away from their SVD initialisation.
    initial = factorize.factorize_model(tiny_model(), {"pw1": 3, "pw2": 4})
    for name in ("pw1_svd_a", "pw1_svd_b", "pw2_svd_a", "pw2_svd_b"):
        assert np.abs(initial.get_layer(name).kernel.numpy() - tuned.get_layer(name).kernel.numpy()).max() > 1e-4
    assert all(layer.trainable for layer in tuned.layers)
    assert any("layerwise 2/2 pw2 (rank 4): step 3/3" in line and "images/s" in line for line in lines)


def test_layerwise_final_phase_trains_every_weight(record_glob):
    """--final_steps: after the per-layer phases, one joint phase in which the unfactorized layers move too."""
    model = tiny_model()
    config = finetune.FinetuneConfig(record_glob, mode="layerwise", steps=4, final_steps=5, batch_size=8,
                                     learning_rate=0.01, log_every=100)
    lines = []
    tuned, phases = finetune.factorize_and_finetune(model, {"pw1": 3, "pw2": 4}, config, log=lines.append)
    assert [phase["layers"] for phase in phases] == [["pw1"], ["pw2"], ["pw1", "pw2"]]
    assert [phase["steps"] for phase in phases] == [2, 2, 5]
    assert not np.array_equal(model.get_layer("stem").kernel.numpy(), tuned.get_layer("stem").kernel.numpy())
    assert any(line.startswith("layerwise final (all weights): step 5/5") for line in lines)
    with pytest.raises(ValueError, match="--final_steps"):
        finetune.FinetuneConfig(record_glob, mode="oneshot", final_steps=3).check()
    with pytest.raises(ValueError, match="--final_steps must be >= 0"):
        finetune.FinetuneConfig(record_glob, final_steps=-1).check()


def test_layerwise_step_freezes_everything_but_the_new_factors(record_glob):
    """One layerwise phase by hand: factor pw1, then steps where only pw1_svd_a/b may change."""
    factorized = factorize.factorize_model(tiny_model(), {"pw1": 3})
    config = finetune.FinetuneConfig(record_glob, steps=2, batch_size=8, learning_rate=0.01)
    before = _weights(factorized)
    finetune.finetune(factorized, config, 2, finetune.make_iterator(config, 8), {"pw1_svd_a", "pw1_svd_b"},
                      log=lambda line: None)
    after = _weights(factorized)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed == {"pw1_svd_a/kernel", "pw1_svd_b/kernel", "pw1_svd_b/bias"}


def test_oneshot_trains_all_weights_and_lowers_the_distillation_loss(record_glob):
    model = tiny_model()
    ranks = {"pw1": 2, "pw2": 3, "logits": 2}
    config = finetune.FinetuneConfig(record_glob, mode="oneshot", steps=20, batch_size=8, learning_rate=0.01,
                                     alpha=0.0, temperature=1.0, log_every=10)
    lines = []
    tuned, phases = finetune.factorize_and_finetune(model, ranks, config, log=lines.append)
    assert len(phases) == 1 and phases[0]["steps"] == 20
    initial = factorize.factorize_model(model, ranks)
    assert not np.array_equal(initial.get_layer("stem").kernel.numpy(), tuned.get_layer("stem").kernel.numpy())
    losses = [float(line.split(" loss ")[1].split()[0]) for line in lines if " loss " in line]
    assert losses[-1] < losses[0]  # the soft labels are the original model's: fine-tuning moves back towards it
    top1 = finetune.evaluate_top1(tuned, record_glob, batch_size=8)
    assert top1 == pytest.approx(independent_top1(tuned, record_glob)[0])
    # Fine-tuned towards the original model's own outputs (its argmax is the label), it agrees with most.
    assert top1 >= 0.75
    # The original model's top-1 on its own argmax labels is exactly 1 (same centre-crop pixels).
    assert finetune.evaluate_top1(model, record_glob, batch_size=8) == 1.0


def test_bad_mode_is_refused(record_glob):
    with pytest.raises(ValueError, match="--mode must be one of layerwise, oneshot"):
        finetune.factorize_and_finetune(tiny_model(), {"pw1": 3}, finetune.FinetuneConfig(record_glob, mode="all"))
