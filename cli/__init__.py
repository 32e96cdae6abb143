"""The ``matd`` command line."""
