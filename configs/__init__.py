"""Recipes as code: each module here has `get_config(runlocal: bool = False)` returning a typed config.

`demo` is the `make demo` chain on Fashion-MNIST (configs/demo.py, a DemoConfig); `imagenet` and
`imagenet_openimages` are cluster recipes (configs/recipe.py, a Recipe). `runlocal` shrinks a recipe
for a laptop. Each module's docstring gives the command to run and the expected time and accuracy.

    python -c "import configs; print(configs.get('imagenet', runlocal=True).students)"
    python -c "import configs; print(configs.get_recipe('demo', runlocal=True).parts)"   # every recipe as a Recipe
"""

from __future__ import annotations

import importlib
from typing import Any

RECIPES = ("demo", "imagenet", "imagenet_openimages")


def get(name: str, runlocal: bool = False) -> Any:
    """`configs.NAME.get_config(runlocal)`; ValueError for a name that is not a recipe here."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return importlib.import_module(f"configs.{name}").get_config(runlocal=runlocal)


def get_recipe(name: str, runlocal: bool = False) -> Any:
    """The Recipe (configs/recipe.py) of any recipe here: the cluster recipes' own, the demo's built from its
    DemoConfig (`configs.demo.recipe`, paths relative to the run's folder)."""
    config = get(name, runlocal=runlocal)
    if name == "demo":
        from configs import demo  # pylint: disable=import-outside-toplevel

        return demo.recipe(config)
    return config
