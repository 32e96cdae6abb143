"""The cluster files that ship with mat-dist, installed as the package data ``mat_dist.clusters``.

Read and copy the YAML files here; ``--cluster NAME`` resolves NAME.yaml in
this folder (mat_dist.cluster.files). This file only makes the folder
importable in an editable install; it holds no code.
"""
