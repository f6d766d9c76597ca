"""Pytest plugins for every test folder (tests/, benchmarks/): the ``browser`` fixture of :mod:`tests.browser`."""

pytest_plugins = ["tests.browser"]
