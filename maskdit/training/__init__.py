"""Training: the trainer, one step, masking recipes, alignment, distillation and pruning."""
