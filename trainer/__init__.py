"""trainer: distills students from soft-label records with our own tf.distribute loop.

Public API (stable; the factorize job reuses it):
- `trainer.students.build_student(name, width, image_size, num_classes, channels=3) -> keras.Model`
- `trainer.losses.distillation_loss(labels, student_logits, teacher_probabilities, alpha, temperature) -> [N]`
- `trainer.data.make_dataset(pattern, image_size, batch_size, training, seed=0, *, spec=None, temperature=None,
  teacher_image_size=None, ...) -> tf.data.Dataset`
- `trainer.train_config.TrainConfig`, `trainer.loop.train(config, strategy=None, teacher=None) -> summary dict`,
  `trainer.loop.train_student(...) -> (student, summary)`, `trainer.loop.make_train_step(...)`,
  `trainer.loop.evaluate(student, pattern, image_size, batch_size=100)`
- entry point `distillery-train` (trainer/train.py).
"""
