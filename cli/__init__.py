"""The ``matd`` command line, installed as ``mat_dist.cli`` (pyproject.toml maps this folder there).

Imported under any other name (``import cli`` from the repository root) its
modules would load a second time as distinct objects, so that is refused.
"""

if __name__ != "mat_dist.cli":
    raise ImportError(f"import the command line as mat_dist.cli, not {__name__} (see pyproject.toml's package-dir)")
