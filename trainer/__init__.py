"""Training: tf.data input, dynamic augmentation, models, losses, metrics, task, export."""
