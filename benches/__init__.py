"""pytest-benchmark suites of keycustody (a package, so its conftest never clashes with tests/)."""
