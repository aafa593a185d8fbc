"""What the test suites share beyond xfd's public :mod:`xfd.testing`: pytest fixtures (``fixtures``) and the
naive per-node download the cluster tests compare xfd with (``baseline``). Not part of the package.

The main suite's ``tests/conftest.py`` puts ``tests/`` on ``sys.path`` (pytest's rootdir conftest); the Xenna
suite adds it with ``pythonpath`` in ``tests/xenna/pyproject.toml``.
"""
