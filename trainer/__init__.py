"""trainer: distills students from soft-label records with our own tf.distribute loop.

A run is a task and one loop (tensorflow/models official/core style): the task (trainer/task.py) builds
the student, the inputs, the train step and the evaluation; `trainer.driver.run_steps` steps it, logs,
times and calls hooks (checkpointing, evaluation every N steps, tests' callbacks). The trainer, the
factorize job's fine-tuning and the training benchmark all use that one loop.

Public API (stable; the factorize job reuses it):
- `trainer.students.build_student(name, width, image_size, num_classes, channels=3) -> keras.Model`
- `trainer.losses.distillation_loss(labels, student_logits, teacher_probabilities, alpha, temperature) -> [N]`
- `trainer.data.make_dataset(pattern, image_size, batch_size, training, seed=0, *, spec=None, temperature=None,
  teacher_image_size=None, ...) -> tf.data.Dataset`
- `trainer.task.DistillationTask(...)` (build_model, create_optimizer, build_inputs, build_train_step,
  interval_terms, evaluate), `trainer.task.make_train_step(...)`, `trainer.task.make_optimizer(...)`,
  `trainer.task.evaluate(student, pattern, image_size, batch_size=100, strategy=None)` (counts summed over
  the strategy's replicas), `trainer.task.Evaluator`
- `trainer.eval_hook.EvalHook`, `trainer.eval_hook.BestExport`; `trainer.resume` (run_config.json, which
  settings may change on resume); `trainer.export.write_student_files`
- `trainer.driver.run_steps(step_fn, iterator, start_step, end_step, *, batch_size, log_every, ...) -> RunTotals`,
  `trainer.driver.Hook`, `trainer.driver.StepCallback`
- `trainer.train_config.TrainConfig`, `trainer.loop.train(config, strategy=None, teacher=None) -> summary dict`,
  `trainer.loop.train_student(...) -> (student, summary)`
- entry point `distillery-train` (trainer/train.py).
"""
