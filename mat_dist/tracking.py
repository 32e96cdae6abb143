"""MLflow tracking: the one place in mat-dist that talks to MLflow.

Why a wrapper rather than ``mlflow.*`` calls spread over the code:

- Every call goes through an ``MlflowClient`` with an explicit run id, so a
  parent sweep run and a trial run can live in one process without fighting
  over MLflow's global "active run".
- The store and the experiment are created once, here, in the driver, before
  any worker logs: a fresh sqlite database migrated by several processes at
  once can crash. ``mlflow.set_experiment`` is never called because it writes
  MLFLOW_EXPERIMENT_ID into ``os.environ``, which Ray workers inherit.
- Paths are made absolute (sqlite database, artifact root) because Ray workers
  ``chdir`` into a session folder.
- Tracking must never kill training: a logging call that fails mid-run (server
  gone, disk full) warns once, is counted in ``Tracker.failures``, and the run
  goes on.
- ``mlflow`` takes seconds to import, so it is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mat_dist.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # in the working directory

# MLflow's documented limits (mlflow.utils.validation); copied so that this
# module does not depend on an internal module's layout.
_MAX_PARAM_VAL_LENGTH = 6000
_MAX_TAG_VAL_LENGTH = 8000
_MAX_KEY_LENGTH = 250
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

# Seconds allowed for the first request to a tracking server: an unreachable
# server must give a clear error quickly, not minutes of retries.
_PROBE_TIMEOUT_S = 5

_SECRET_WORDS = ("token", "secret", "password", "key")
_STATUSES = ("FINISHED", "FAILED", "KILLED")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: str | None) -> str:
    """Pick the tracking URI: explicit ``uri`` > env MLFLOW_TRACKING_URI > DEFAULT.

    A relative sqlite path becomes absolute (``sqlite:///mlflow.db`` ->
    ``sqlite:////<cwd>/mlflow.db``) because Ray workers run in another
    directory and would otherwise open a different, empty database.
    ``file:`` stores (and bare paths, which MLflow reads as file stores) are
    refused by MLflow 3.17 unless MLFLOW_ALLOW_FILE_STORE=true: say so now,
    as a UserError, rather than deep inside a worker.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            path = os.path.abspath(os.path.expanduser(path))
            # abspath starts with "/", giving the four slashes of an absolute sqlite URI.
            uri = f"sqlite:///{path}{sep}{query}"
        return uri
    scheme = uri.split(":", 1)[0] if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else ""
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
            raise UserError(
                f"MLflow tracking URI {uri} is a file store, which MLflow 3.17 no longer "
                "accepts; pass --tracking-uri sqlite:///mlflow.db (a local store) instead"
            )
        if scheme == "":
            return Path(uri).expanduser().absolute().as_uri()
    return uri


def _sqlite_artifact_location(uri: str, experiment: str) -> str | None:
    """Absolute artifact folder for a new experiment in a sqlite store: ``<db dir>/mlruns/<name>``.

    MLflow's own default is ``./mlruns`` of whatever directory the store was
    first opened from; pinning it next to the database keeps one store's
    artifacts in one place whichever process (and cwd) logs them.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    if not path or path == ":memory:":
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return str(Path(path).parent / "mlruns" / slug)


# --------------------------------------------------------------------------- params


def redact(params: Mapping[str, Any]) -> dict:
    """Copy of ``params`` with secret-looking values replaced by ``"***"``.

    A key counts as secret when it contains token/secret/password/key in any
    case (aws_secret_access_key, MLFLOW_TRACKING_TOKEN, api_key): configs may
    carry credentials, and MLflow params are readable by anyone with access to
    the store. Nested mappings are redacted recursively.
    """
    out: dict = {}
    for k, v in params.items():
        if any(word in str(k).lower() for word in _SECRET_WORDS):
            out[k] = "***"
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        else:
            out[k] = v
    return out


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys (``{"method": {"eps": 0.3}}`` -> ``{"method.eps": "0.3"}``).

    MLflow params are flat strings; lists and other values become ``str(value)``,
    truncated to MLflow's limits so one long value cannot fail the whole batch.
    """
    flat: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, prefix=f"{key}."))
        else:
            flat[key[:_MAX_KEY_LENGTH]] = str(v)[:_MAX_PARAM_VAL_LENGTH]
    return flat


def _as_finite_float(value: Any) -> float | None:
    """The value as a float when it is a finite number (int, float, numpy or 0-d tensor), else None."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a multi-element tensor
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them exactly."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _quiet_mlflow_logs() -> None:
    """Silence the alembic migration chatter MLflow prints when it creates a sqlite database."""
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _logging_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "MLflow could not record this", not "mat-dist has a bug"."""
    import requests
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, requests.RequestException, OSError]
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


def _short_reason(exc: BaseException) -> str:
    """A few words on why a request failed ("Connection refused", "timed out"), for one-line errors."""
    text = f"{exc} {exc.__context__ or ''}"
    if m := re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text):
        return m.group(1).strip()
    if "timed out" in text.lower():
        return f"no answer within {_PROBE_TIMEOUT_S} s"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first[:120]


def _is_connection_error(exc: BaseException) -> bool:
    """True when MLflow's request never got an HTTP answer (refused, timed out, DNS failure)."""
    import requests

    return isinstance(exc, requests.RequestException) or isinstance(
        exc.__context__, requests.RequestException
    ) or "failed with exception" in str(exc)


def git_commit(path: str | os.PathLike = ".") -> str | None:
    """Commit of the git repository holding ``path``, with "+dirty" if tracked files changed.

    Logged with every run so that a result can be traced to the code that made
    it. Returns None outside a repository or without git; never raises, since
    provenance must not stop a run.
    """
    p = Path(path)
    cwd = p if p.is_dir() else p.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if not commit:
        return None
    return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


# --------------------------------------------------------------------------- trackers


class Tracker:
    """One MLflow run. Every MLflow call of mat-dist goes through here; only rank 0 makes one.

    Create with ``Tracker.start(...)``; use as a context manager so that a
    crash marks the run FAILED and Ctrl-C marks it KILLED.
    """

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self._client = client
        self._run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.failures = 0  # logging calls that failed and were dropped
        self._ended = False
        self._skipped_keys: set[str] = set()

    # ---------------------------------------------------------------- start

    @classmethod
    def start(
        cls,
        *,
        uri: str | None,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> "Tracker":
        """Open the store, get or create ``experiment``, and start (or resume) a run.

        ``run_id`` resumes that run (``--resume``); ``parent_run_id`` nests the
        new run under a parent (tag ``mlflow.parentRunId``, which also works
        across processes). Raises UserError when the store cannot be reached.
        """
        uri = resolve_tracking_uri(uri)
        _quiet_mlflow_logs()
        import mlflow
        from mlflow.exceptions import MlflowException

        if uri.startswith("sqlite:///"):
            db = uri[len("sqlite:///"):].partition("?")[0]
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = cls._get_or_create_experiment(client, uri, experiment)

        all_tags = {k: str(v)[:_MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            if run_id:
                try:
                    run = client.get_run(run_id)
                except MlflowException as e:
                    raise UserError(
                        f"MLflow run {run_id} was not found in {uri} ({_short_reason(e)}); "
                        "check the run id, or start a new run without --resume"
                    ) from None
                experiment_id = run.info.experiment_id
                client.update_run(run_id, status="RUNNING")
                if all_tags:
                    cls._log_tags(client, run_id, all_tags)
            else:
                run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
                run_id = run.info.run_id
        except _logging_errors() as e:
            raise UserError(
                f"MLflow could not start a run in {uri} ({_short_reason(e)}); "
                "check the tracking server, or pass --tracking-uri sqlite:///mlflow.db"
            ) from None
        # Only now, once the store answered: this also sets MLFLOW_TRACKING_URI in os.environ
        # (MLflow does that), so Ray workers started later inherit the absolute URI.
        mlflow.set_tracking_uri(uri)
        return cls(client, run_id, experiment_id, uri)

    @staticmethod
    def _get_or_create_experiment(client: Any, uri: str, name: str) -> str:
        """Experiment id for ``name``, creating it; the first request doubles as a reachability check.

        For an http(s) server that first request runs with no retries and a
        short timeout (env vars restored afterwards), so an unreachable server
        is a one-line UserError within seconds instead of minutes of retries.
        """
        from mlflow.exceptions import MlflowException

        remote = uri.startswith(("http://", "https://"))
        probe = (
            _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(_PROBE_TIMEOUT_S))
            if remote
            else contextlib.nullcontext()
        )
        try:
            with probe:
                exp = client.get_experiment_by_name(name)
        except _logging_errors() as e:
            if remote and _is_connection_error(e):
                raise UserError(
                    f"MLflow tracking server {uri} is unreachable ({_short_reason(e)}); start it, "
                    "or pass --tracking-uri sqlite:///mlflow.db for a local store"
                ) from None
            raise UserError(
                f"MLflow store {uri} failed to answer ({_short_reason(e)}); check the URI and "
                "credentials, or pass --tracking-uri sqlite:///mlflow.db for a local store"
            ) from None

        if exp is None:
            try:
                return client.create_experiment(
                    name, artifact_location=_sqlite_artifact_location(uri, name)
                )
            except MlflowException:
                exp = client.get_experiment_by_name(name)  # another driver created it first
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {name!r} in {uri} is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or use another name"
            )
        return exp.experiment_id

    # ---------------------------------------------------------------- logging

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) config: flattened to dotted keys, secrets redacted, values truncated."""
        from mlflow.entities import Param

        flat = _flatten(redact(params))
        items = [Param(k, v) for k, v in flat.items()]
        with self._guard(f"params {_names(flat)}"):
            for i in range(0, len(items), _MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(self._run_id, params=items[i:i + _MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log metrics at ``step``; NaN, inf and non-numbers are skipped (logged once per key)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            x = _as_finite_float(v)
            if x is None:
                if k not in self._skipped_keys:
                    self._skipped_keys.add(k)
                    log.warning("metric %r = %r is not a finite number; not logged (this key is "
                                "not reported again)", k, v)
                continue
            items.append(Metric(str(k), x, now, int(step)))
        if not items:
            return
        with self._guard(f"metrics {_names(metrics)} at step {step}"):
            for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
                self._client.log_batch(self._run_id, metrics=items[i:i + _MAX_METRICS_PER_BATCH])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` is recorded (empty if the store cannot say)."""
        with self._guard(f"history of metric {key}"):
            return {m.step for m in self._client.get_metric_history(self._run_id, key)}
        return set()

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        """Copy a file (or a whole directory) into the run's artifacts, under ``artifact_dir``."""
        with self._guard(f"artifact {os.fspath(path)}"):
            if Path(path).is_dir():
                self._client.log_artifacts(self._run_id, os.fspath(path), artifact_dir)
            else:
                self._client.log_artifact(self._run_id, os.fspath(path), artifact_dir)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Save a matplotlib (or plotly) figure as artifact ``artifact_file`` (e.g. "plots/acc.png")."""
        with self._guard(f"figure {artifact_file}"):
            self._client.log_figure(self._run_id, fig, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (values truncated to MLflow's limit)."""
        clean = {str(k): str(v)[:_MAX_TAG_VAL_LENGTH] for k, v in tags.items()}
        with self._guard(f"tags {_names(clean)}"):
            self._log_tags(self._client, self._run_id, clean)

    @staticmethod
    def _log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=items[i:i + _MAX_PARAMS_TAGS_PER_BATCH])

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED; later calls do nothing."""
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, not {status!r}")
        if self._ended:
            return
        self._ended = True
        with self._guard(f"end of run (status {status})"):
            self._client.set_terminated(self._run_id, status)
        if self.failures:
            log.warning("%d MLflow logging call(s) failed in run %s; the run is incomplete",
                        self.failures, self._run_id)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Swallow an MLflow failure so training goes on: warn on the first one, count them all."""
        try:
            yield
        except _logging_errors() as e:
            self.failures += 1
            if self.failures == 1:
                warnings.warn(
                    f"MLflow logging failed, {what} not logged ({_short_reason(e)}); training "
                    f"goes on, later failures of run {self._run_id} are only counted "
                    "(Tracker.failures)",
                    RuntimeWarning,
                    stacklevel=4,
                )


def _names(keys: Mapping[str, Any], limit: int = 5) -> str:
    """``"a, b, c (+4 more)"``: enough to say what was lost without a huge warning."""
    names = [str(k) for k in keys]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class NullTracker:
    """Stands in for Tracker when tracking is off or on a non-zero rank: every method does nothing."""

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    failures = 0

    @classmethod
    def start(cls, **_: Any) -> "NullTracker":
        return cls()

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        pass

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        pass

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
