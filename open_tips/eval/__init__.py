"""open_tips.eval: frozen-feature evaluation on the TIPS papers' task families.

One module per task (``knn``, ``linear``, ``zeroshot``, ``retrieval``, ``segmentation``, ``depth``,
``normals``, ``zeroshot_seg``), shared pieces (``metrics``, ``features`` with its on-disk cache,
``dense_probe``), the task and suite registry (``registry``; tasks in ``tasks/``, suites in ``suites/``,
one module each), the runner (``suite.evaluate``), ``report`` (results.json, Markdown, ``compare``) and ``pictures`` (PCA and zero-shot
segmentation PNGs). Modules are imported on use; see docs/eval.md.
"""


def __getattr__(name: str):
    if name == "TASKS":  # the registered task names (open_tips.eval.registry.task_names)
        # on first use: importing the package stays cheap, and the registry imports every task module
        from open_tips.eval.registry import task_names

        return task_names()
    raise AttributeError(name)
