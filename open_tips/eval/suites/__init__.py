"""Evaluation suites, one module per dataset layout (or family of layouts); each registers its suites with
``open_tips.eval.registry.register_suite`` when imported (the registry imports every module here)."""
