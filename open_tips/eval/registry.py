"""The task and suite registries behind ``open-tips eval``.

A task (``Task``) turns the data a suite loaded into results: it says which data it needs (``needs``),
whether it needs the text tower (``text``), and runs on an ``open_tips.eval.context.Context``. A suite
(``Suite``) knows one on-disk layout: how to recognise it (``detect``), how to load it
(``load(root, options) -> EvalData``), which tasks it runs by default, and where to get the data.

Tasks live in ``open_tips/eval/tasks/``, suites in ``open_tips/eval/suites/``; each module there registers
what it defines with ``register_task`` / ``register_suite`` when imported, and every module in those two
packages is imported on first use (``tasks()`` / ``suites()``). Adding a task or a suite is adding one
module; nothing else names them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field


class EvalError(Exception):
    """A user-facing evaluation error (unknown suite, a task the model or the data cannot run, a missing
    dataset file): the CLI prints its message on one line and exits non-zero."""


@dataclass(frozen=True)
class Task:
    name: str  # the name given to --tasks
    run: Callable  # run(ctx) -> {result key: metrics dict}
    needs: tuple[str, ...] = ()  # EvalData requirements, see open_tips.eval.dataset.EvalData.missing
    text: bool = False  # needs a text tower and a tokenizer
    summary: str = ""  # one line for --help and docs
    order: int = 100  # position in listings and in a run


@dataclass(frozen=True)
class Suite:
    name: str  # the name given to --suite
    load: Callable  # load(root: Path | None, options: EvalOptions) -> EvalData
    tasks: tuple[str, ...]  # what it runs by default
    summary: str = ""
    layout: str = ""  # the expected on-disk layout, for error messages and docs
    source: str = ""  # where to get the data
    detect: Callable | None = None  # detect(path) -> bool, for --suite auto
    needs_root: bool = True
    priority: int = 0  # higher is tried first by --suite auto
    aliases: tuple[str, ...] = field(default=())


_TASKS: dict[str, Task] = {}
_SUITES: dict[str, Suite] = {}
_LOADED = False


def register_task(task: Task) -> Task:
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def register_suite(suite: Suite) -> Suite:
    for name in (suite.name, *suite.aliases):
        if name in _SUITES and _SUITES[name] is not suite:
            raise ValueError(f"suite {name!r} is registered twice")
        _SUITES[name] = suite
    return suite


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    # Here, not at the top: the task and suite modules import this registry to register themselves.
    from open_tips.eval import suites as suite_package
    from open_tips.eval import tasks as task_package

    for package in (task_package, suite_package):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{info.name}")


def tasks() -> dict[str, Task]:
    """Every registered task, in registration order (module name order, then order within a module)."""
    _load_all()
    return dict(sorted(_TASKS.items(), key=lambda item: item[1].order))


def suites() -> dict[str, Suite]:
    """Every registered suite by name (aliases included)."""
    _load_all()
    return dict(_SUITES)


def task_names() -> tuple[str, ...]:
    return tuple(tasks())


def suite_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.name for s in suites().values()))


def get_task(name: str) -> Task:
    found = tasks().get(name)
    if found is None:
        raise EvalError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return found


def get_suite(name: str) -> Suite:
    found = suites().get(name)
    if found is None:
        raise EvalError(f"unknown suite {name!r}; known: {', '.join(suite_names())}")
    return found
