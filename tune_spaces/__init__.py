"""The search spaces that ship with mat-dist, installed as the package data ``mat_dist.tune_spaces``.

Read and copy the YAML files here; ``--space NAME`` resolves NAME.yaml in
this folder (mat_dist.tune.space). This file only makes the folder importable
in an editable install; it holds no code.
"""
