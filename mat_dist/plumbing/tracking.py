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

from mat_dist.plumbing.environ import scoped_env
from mat_dist.plumbing.errors import UserError

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

# Retry budget of every logging call to an http(s) server during a run, unless the user set
# MLflow's own variables: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) stall
# training for minutes per call once a server is gone.
_RUN_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# A run whose server stopped answering makes one last quick try to close itself.
_LAST_TRY_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

_SECRET_WORDS = ("token", "secret", "password", "key")
# The user:password@ part of a URL (http://user:token@host:5000).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
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
                f"MLflow tracking URI {safe_uri(uri)} is a file store, which MLflow 3.17 no longer "
                "accepts; pass --tracking-uri sqlite:///mlflow.db (a local store) instead"
            )
        if scheme == "":
            return Path(uri).expanduser().absolute().as_uri()
    return uri


def _sqlite_file(uri: str) -> str | None:
    """The database file of a sqlite store's URI; None for another store or an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return path if path and path != ":memory:" else None


def _sqlite_artifact_location(uri: str, experiment: str) -> str | None:
    """Absolute artifact folder for a new experiment in a sqlite store: ``<db dir>/mlruns/<name>``.

    MLflow's own default is ``./mlruns`` of whatever directory the store was
    first opened from; pinning it next to the database keeps one store's
    artifacts in one place whichever process (and cwd) logs them.
    """
    path = _sqlite_file(uri)
    if path is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return str(Path(path).parent / "mlruns" / slug)


# --------------------------------------------------------------------------- params


def safe_uri(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``http://u:tok@h`` -> ``http://***@h``.

    For anything that is logged, printed or raised: a tracking URI may carry a
    token, and MLflow params, warnings and error lines are read by others.
    """
    return _URL_CREDENTIALS.sub("***@", text)


def redact(params: Mapping[str, Any]) -> dict:
    """Copy of ``params`` with secret-looking values replaced by ``"***"``.

    A key counts as secret when it contains token/secret/password/key in any
    case (aws_secret_access_key, MLFLOW_TRACKING_TOKEN, api_key): configs may
    carry credentials, and MLflow params are readable by anyone with access to
    the store. Nested mappings are redacted recursively, and credentials inside
    URLs (``tracking.uri: http://user:token@host``) are replaced by ``***``.
    """
    out: dict = {}
    for k, v in params.items():
        if any(word in str(k).lower() for word in _SECRET_WORDS):
            out[k] = "***"
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        elif isinstance(v, str):
            out[k] = safe_uri(v)
        elif isinstance(v, (list, tuple)):
            out[k] = [safe_uri(x) if isinstance(x, str) else x for x in v]
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
    text = safe_uri(f"{exc} {exc.__context__ or ''}")
    if m := re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text):
        return m.group(1).strip()
    if "timed out" in text.lower():
        return f"no answer within {_PROBE_TIMEOUT_S} s"
    first = safe_uri(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
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


def check_store(uri: str | None, experiment: str) -> None:
    """UserError (one line, in seconds) when the store cannot be reached; creates the experiment.

    For commands that log only at their end (``matd evaluate``): a wrong
    ``--tracking-uri`` must stop them before the work, not after it.
    """
    _open_store(resolve_tracking_uri(uri), experiment)


def _open_store(uri: str, experiment: str) -> tuple[Any, str]:
    """(client, experiment id) of the store at ``uri`` (already resolved), its sqlite folder made and
    ``experiment`` created; UserError (one line, in seconds) when the store does not answer."""
    _quiet_mlflow_logs()
    import mlflow

    db = _sqlite_file(uri)
    if db is not None:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client, Tracker._get_or_create_experiment(client, uri, experiment)


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
        self.failures = 0  # logging calls that failed, or were skipped after the server stopped answering
        # Where the run's numbers are kept anyway (e.g. the run folder's metrics.jsonl): named in warnings.
        self.local_record: str | None = None
        self._ended = False
        self._skipped_keys: set[str] = set()
        self._server_gone: str | None = None  # why, once a server stopped answering: later calls are skipped
        self._lost: list[str] = []             # what was not logged, for the warning at the end

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
        client, experiment_id = _open_store(uri, experiment)
        import mlflow
        from mlflow.exceptions import MlflowException

        all_tags = {k: safe_uri(str(v))[:_MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            if run_id:
                try:
                    run = client.get_run(run_id)
                except MlflowException as e:
                    raise UserError(
                        f"MLflow run {run_id} was not found in {safe_uri(uri)} ({_short_reason(e)}); "
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
                f"MLflow could not start a run in {safe_uri(uri)} ({_short_reason(e)}); "
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
            scoped_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(_PROBE_TIMEOUT_S))
            if remote
            else contextlib.nullcontext()
        )
        try:
            with probe:
                exp = client.get_experiment_by_name(name)
        except _logging_errors() as e:
            if remote and _is_connection_error(e):
                raise UserError(
                    f"MLflow tracking server {safe_uri(uri)} is unreachable ({_short_reason(e)}); start it, "
                    "or pass --tracking-uri sqlite:///mlflow.db for a local store"
                ) from None
            raise UserError(
                f"MLflow store {safe_uri(uri)} failed to answer ({_short_reason(e)}); check the URI and "
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
                f"MLflow experiment {name!r} in {safe_uri(uri)} is deleted; restore it "
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
        with self._guard("params", f"params {_names(flat)}") as go:
            for i in range(0, len(items), _MAX_PARAMS_TAGS_PER_BATCH) if go else ():
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
        with self._guard(f"metrics of step {step}", f"metrics {_names(metrics)} at step {step}") as go:
            for i in range(0, len(items), _MAX_METRICS_PER_BATCH) if go else ():
                self._client.log_batch(self._run_id, metrics=items[i:i + _MAX_METRICS_PER_BATCH])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` is recorded (empty if the store cannot say)."""
        with self._guard(f"history of {key}", f"history of metric {key}") as go:
            if go:
                return {m.step for m in self._client.get_metric_history(self._run_id, key)}
        return set()

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        """Copy a file (or a whole directory) into the run's artifacts, under ``artifact_dir``."""
        with self._guard(f"artifact {Path(path).name}", f"artifact {os.fspath(path)}") as go:
            if not go:
                pass
            elif Path(path).is_dir():
                self._client.log_artifacts(self._run_id, os.fspath(path), artifact_dir)
            else:
                self._client.log_artifact(self._run_id, os.fspath(path), artifact_dir)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Save a matplotlib (or plotly) figure as artifact ``artifact_file`` (e.g. "plots/acc.png")."""
        with self._guard(f"figure {artifact_file}", f"figure {artifact_file}") as go:
            if go:
                self._client.log_figure(self._run_id, fig, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (URL credentials removed, values truncated to MLflow's limit)."""
        clean = {str(k): safe_uri(str(v))[:_MAX_TAG_VAL_LENGTH] for k, v in tags.items()}
        with self._guard("tags", f"tags {_names(clean)}") as go:
            if go:
                self._log_tags(self._client, self._run_id, clean)

    @staticmethod
    def _log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=items[i:i + _MAX_PARAMS_TAGS_PER_BATCH])

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED; later calls do nothing.

        After the server stopped answering, one quick try (no retries, 5 s): if
        the server is back the run is at least closed.
        """
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, not {status!r}")
        if self._ended:
            return
        self._ended = True
        gone, self._server_gone = self._server_gone, None
        limits = scoped_env(**_LAST_TRY_LIMITS) if gone and self._remote else contextlib.nullcontext()
        with limits, self._guard("end of run", f"end of run (status {status})", quiet=bool(gone)) as go:
            if go:
                self._client.set_terminated(self._run_id, status)
        if self.failures:
            kept = f"; {self.local_record} keeps every epoch" if self.local_record else ""
            log.warning("MLflow run %s is incomplete: %d logging call(s) failed or were skipped (not logged: "
                        "%s)%s", self._run_id, self.failures, _names(dict.fromkeys(self._lost), limit=8), kept)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    @property
    def _remote(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @contextlib.contextmanager
    def _guard(self, short: str, what: str, *, quiet: bool = False) -> Iterator[bool]:
        """Run one logging call (the block, when it gets True) so that a failure never stops training.

        A failure warns once and is counted. A server that stops answering
        (refused, timed out) is not asked again in this run: every later call
        is skipped at once (given False) and counted, instead of stalling
        training through MLflow's retries each time.
        """
        if self._server_gone is not None:
            self.failures += 1
            self._lost.append(short)
            yield False
            return
        user_set = {k for k in _RUN_HTTP_LIMITS if k in os.environ}
        limits = {k: v for k, v in _RUN_HTTP_LIMITS.items() if k not in user_set} if self._remote else {}
        try:
            with scoped_env(**limits):
                yield True
        except _logging_errors() as e:
            self.failures += 1
            self._lost.append(short)
            kept = f"; {self.local_record} keeps every epoch" if self.local_record else ""
            if self._remote and _is_connection_error(e):
                self._server_gone = _short_reason(e)
                if not quiet:
                    warnings.warn(
                        f"MLflow tracking server {safe_uri(self.tracking_uri)} stopped answering "
                        f"({self._server_gone}): {what} not logged, and nothing more of run {self._run_id} "
                        f"is sent to it; training goes on{kept}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            elif self.failures == 1 and not quiet:
                warnings.warn(
                    f"MLflow logging failed, {what} not logged ({_short_reason(e)}); training "
                    f"goes on, later failures of run {self._run_id} are only counted "
                    f"(Tracker.failures){kept}",
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
