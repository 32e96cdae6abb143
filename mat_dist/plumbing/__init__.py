"""Plumbing: what every layer may use and that knows nothing of the method: one-line user errors, atomic files, the console, environment scoping, the YAML schema, file lookup and MLflow tracking."""
