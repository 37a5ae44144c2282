"""open_tips.eval: frozen-feature evaluation on the TIPS papers' task families.

One module per task (``knn``, ``linear``, ``zeroshot``, ``retrieval``, ``segmentation``, ``depth``,
``normals``, ``zeroshot_seg``), shared pieces (``metrics``, ``features`` with its on-disk cache,
``dense_probe``), the suites (``suite.evaluate_builtin`` / ``evaluate_coco`` / ``evaluate_folder`` /
``evaluate_path``), ``report`` (results.json, Markdown, ``compare``) and ``pictures`` (PCA and zero-shot
segmentation PNGs). Modules are imported on use; see docs/eval.md.
"""

# The task names of `open-tips eval --tasks` (here, so that the CLI parser needs no heavy import).
TASKS = ("knn", "linear", "zeroshot", "retrieval", "seg", "depth", "normals", "zeroshot-seg")
