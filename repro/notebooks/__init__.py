"""Copies of the repository's notebooks/*.ipynb, shipped so that `repro batch` and `repro quickstart` find
them when the package is installed from a wheel. notebooks/ is the source; tests check the copies match."""
