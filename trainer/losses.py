"""The knowledge-distillation loss (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network").

Per example, with student logits z, teacher distribution q_T at temperature T and hard label y:

    loss = alpha * CE(y, softmax(z))  +  (1 - alpha) * T^2 * KL(q_T || softmax(z / T))

The T^2 factor keeps the gradient of the soft term on the same scale as the hard term when T changes
(the soft-target gradients scale as 1/T^2; Hinton et al. 2015, section 2). Examples without a label
(label -1, the Open Images role) contribute only the distillation term: their cross-entropy term is
zero, the distillation term keeps its (1 - alpha) * T^2 weight (no renormalization, so a labeled and an
unlabeled example weigh the same on the soft term and a batch's weighting does not depend on how many
of its examples are labeled).

Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7) applies to the
hard-label term only: with smoothing e over C classes its target is (1 - e) * onehot(y) + e / C; the
teacher's distribution is already soft and is left as it is.

The losses are per example; the train step sums them and divides by the *global* batch size
(`tf.nn.compute_average_loss`), so the gradient is the same on one replica or many.

    python -c "import numpy as np; from trainer import losses; \
print(losses.distillation_loss(np.array([1, -1]), np.eye(2, 3) * 3, np.full((2, 3), 1 / 3), 0.5, 2.0))"
"""

from __future__ import annotations

import tensorflow as tf


def distillation_terms(labels: tf.Tensor, student_logits: tf.Tensor, teacher_probabilities: tf.Tensor,
                       temperature: float, label_smoothing: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """The two unweighted per-example terms.

    Args:
      labels: [N] int hard labels, -1 for unlabeled examples.
      student_logits: [N, C] float logits.
      teacher_probabilities: [N, C] the teacher distribution at `temperature` (rows sum to 1).
      temperature: T > 0.
      label_smoothing: e in [0, 1): the hard-label target is (1 - e) * onehot(y) + e / C.

    Returns:
      (cross_entropy [N], kl_divergence [N]) float32: CE(y, softmax(z)) (0 where the label is -1) and
      KL(q_T || softmax(z / T)) (without the T^2 factor).
    """
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_probabilities = tf.cast(teacher_probabilities, tf.float32)
    labels = tf.cast(labels, tf.int32)
    labeled = labels >= 0
    safe_labels = tf.where(labeled, labels, tf.zeros_like(labels))
    if label_smoothing:
        num_classes = tf.shape(student_logits)[-1]
        targets = (1.0 - label_smoothing) * tf.one_hot(safe_labels, num_classes) + label_smoothing / tf.cast(
            num_classes, tf.float32)
        cross_entropy = -tf.reduce_sum(targets * tf.nn.log_softmax(student_logits, axis=-1), axis=-1)
    else:
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=student_logits)
    cross_entropy = tf.where(labeled, cross_entropy, tf.zeros_like(cross_entropy))
    student_log_probabilities = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    # xlogy gives 0 * log 0 = 0 for classes the teacher gives no mass.
    kl_divergence = tf.reduce_sum(
        tf.math.xlogy(teacher_probabilities, teacher_probabilities)
        - teacher_probabilities * student_log_probabilities, axis=-1)
    return cross_entropy, kl_divergence


def distillation_loss(labels: tf.Tensor, student_logits: tf.Tensor, teacher_probabilities: tf.Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-example KD loss: alpha * CE(smoothed label) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    Args:
      labels: [N] int hard labels; -1 marks an unlabeled example, which contributes only
        (1 - alpha) * T^2 * KL.
      student_logits: [N, C] student logits.
      teacher_probabilities: [N, C] teacher distribution at `temperature`
        (`distillery.records.teacher_distribution` for stored views, softmax(logits / T) online).
      alpha: weight of the hard-label term, in [0, 1].
      temperature: T > 0.
      label_smoothing: e in [0, 1) on the hard-label term only (0: the plain label).

    Returns:
      [N] float32 losses (not averaged: divide their sum by the global batch size).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    cross_entropy, kl_divergence = distillation_terms(labels, student_logits, teacher_probabilities, temperature,
                                                      label_smoothing)
    return alpha * cross_entropy + (1.0 - alpha) * temperature**2 * kl_divergence
