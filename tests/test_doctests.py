"""The examples in kseg's docstrings run, so they stay true."""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import kseg

MODULES = sorted(m.name for m in pkgutil.walk_packages(kseg.__path__, "kseg."))
# Modules that need an optional extra (`[bench]`: torch); walked only where it is installed.
OPTIONAL = {"kseg.benchmarks.torch_reference": "torch"}


def _with_examples():
    finder = doctest.DocTestFinder()
    for name in MODULES:
        if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None:
            continue
        module = importlib.import_module(name)
        if any(test.examples for test in finder.find(module)):
            yield name


@pytest.mark.parametrize("name", list(_with_examples()))
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_there_are_examples():
    assert {"kseg.model", "kseg.em.estep", "kseg.evaluation.metrics",
            "kseg.utils.progress"} <= set(_with_examples())
