"""The KD loss against a NumPy hand computation (Hinton et al. 2015), top-k teachers included."""

import numpy as np
import pytest
import tensorflow as tf

from distillery import records
from trainer import losses


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _hand_loss(labels, student_logits, teacher_probabilities, alpha, temperature):
    """alpha * CE + (1 - alpha) * T^2 * KL(q || softmax(z / T)), written out per example."""
    out = []
    log_p = _log_softmax(student_logits.astype(np.float64))
    log_p_t = _log_softmax(student_logits.astype(np.float64) / temperature)
    for i, label in enumerate(labels):
        q = teacher_probabilities[i].astype(np.float64)
        kl = sum(q[c] * (np.log(q[c]) - log_p_t[i, c]) for c in range(q.size) if q[c] > 0)
        ce = -log_p[i, label] if label >= 0 else 0.0
        out.append(alpha * ce + (1 - alpha) * temperature**2 * kl)
    return np.array(out)


@pytest.mark.parametrize("alpha,temperature,top_k", [(0.5, 4.0, 3), (0.1, 1.0, 7), (0.0, 2.5, 1), (1.0, 3.0, 7)])
def test_loss_equals_hand_computation(alpha, temperature, top_k):
    rng = np.random.default_rng(0)
    teacher_logits = rng.normal(0, 3, (6, 7)).astype(np.float32)
    student_logits = rng.normal(0, 2, (6, 7)).astype(np.float32)
    labels = np.array([0, 3, -1, 6, -1, 2])
    class_ids, logits, logsumexp = records.top_k_of_logits(teacher_logits, top_k)
    teacher_probabilities = records.teacher_distribution_numpy(class_ids, logits, logsumexp, 7, temperature)
    expected = _hand_loss(labels, student_logits, teacher_probabilities, alpha, temperature)
    actual = losses.distillation_loss(labels, student_logits, teacher_probabilities, alpha, temperature).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # Unlabeled rows hold only the distillation term.
    kd_only = _hand_loss(np.full(6, -1), student_logits, teacher_probabilities, alpha, temperature)
    np.testing.assert_allclose(actual[[2, 4]], kd_only[[2, 4]], rtol=1e-5, atol=1e-6)


def test_full_logit_teacher_is_softmax_at_temperature_and_gradient_is_hand_formula():
    rng = np.random.default_rng(1)
    teacher_logits = rng.normal(0, 3, (4, 5)).astype(np.float32)
    student_logits = tf.constant(rng.normal(0, 2, (4, 5)).astype(np.float32))
    temperature = 3.0
    class_ids, logits, logsumexp = records.top_k_of_logits(teacher_logits, 5)
    q = records.teacher_distribution_numpy(class_ids, logits, logsumexp, 5, temperature)
    np.testing.assert_allclose(q, np.exp(_log_softmax(teacher_logits / temperature)), rtol=1e-5)
    labels = np.array([-1, -1, -1, -1])
    with tf.GradientTape() as tape:
        tape.watch(student_logits)
        loss = tf.reduce_sum(losses.distillation_loss(labels, student_logits, q, 0.3, temperature))
    gradient = tape.gradient(loss, student_logits).numpy()
    # d/dz of (1 - alpha) T^2 KL(q || softmax(z/T)) = (1 - alpha) T (softmax(z/T) - q).
    expected = 0.7 * temperature * (np.exp(_log_softmax(student_logits.numpy() / temperature)) - q)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


def test_perfect_student_has_zero_kd_term():
    teacher_logits = np.array([[1.0, 2.0, 0.5]], np.float32)
    q = np.exp(_log_softmax(teacher_logits / 2.0)).astype(np.float32)
    value = losses.distillation_loss(np.array([-1]), teacher_logits, q, 0.5, 2.0).numpy()
    np.testing.assert_allclose(value, [0.0], atol=1e-6)


def test_bad_alpha_or_temperature_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        losses.distillation_loss(np.array([0]), np.zeros((1, 2)), np.full((1, 2), 0.5), 1.5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_loss(np.array([0]), np.zeros((1, 2)), np.full((1, 2), 0.5), 0.5, 0.0)
