"""Evaluation tasks, one module per task family; each registers its tasks with
``open_tips.eval.registry.register_task`` when imported (the registry imports every module here)."""
