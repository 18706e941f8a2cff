"""Where the MLflow store is: one rule, the same for every command; and whether a model URI names a model in it.

A run logs to `<output-dir>/mlflow.db`, beside everything else it writes, unless the store is named: by the
config key `mlflow.tracking_uri` (`--tracking-uri` on the commands that read a store), else by
$MLFLOW_TRACKING_URI. The commands that read a store (`predict` of an MLflow model, `serve`, `promote`,
`mlflow-ui`, the spool replay) find it the same way from their `--output-dir` (default: the current folder),
say which store they use and why, and refuse a SQLite file that does not exist: MLflow would create an empty
one there and then answer "not found" about the run's models.

`find_model` asks the store about a model URI before anything loads or serves it: one clear error that names
the store and what it holds, instead of MLflow's traceback half a minute later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from asc_ray.errors import AscRayError

STORE_FILE = "mlflow.db"  # in the run's output dir
# what chose the store, as the store line names it
FROM_OPTION = "--tracking-uri"
FROM_CONFIG = "config mlflow.tracking_uri"
FROM_ENV = "$MLFLOW_TRACKING_URI"
FROM_OUTPUT_DIR = "the output dir's"
FROM_HERE = "no --output-dir: this folder's"
STORE_LINE = "MLflow store: {uri} ({why})"
NO_STORE = "no MLflow store there: a command that reads one does not create an empty one"
OUTPUT_DIR_HELP = (
    "the run's output dir: its MLflow store is OUTPUT_DIR/mlflow.db (default: this folder; "
    "$MLFLOW_TRACKING_URI or --tracking-uri name another store)"
)
URI_HELP = "the MLflow store (default: $MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db)"


def absolute_uri(uri: str) -> str:
    """A tracking URI every process can use: a relative sqlite path or a bare folder (legacy file store) made
    absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    elif "://" not in uri:  # a bare folder: legacy file store
        uri = Path(uri).resolve().as_uri()
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a (resolved) sqlite URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@dataclass(frozen=True)
class Store:
    uri: str  # absolute (a SQLite path resolved), as every process and node must use it
    why: str  # what chose it: one of the FROM_* above

    @property
    def line(self) -> str:
        return STORE_LINE.format(uri=self.uri, why=self.why)


def locate_store(
    named: str | None = None, output_dir: str | Path | None = None, named_by: str = FROM_OPTION
) -> Store:
    """The store of the rule: `named` (by `named_by`: an option or the config), else $MLFLOW_TRACKING_URI,
    else `output_dir`/mlflow.db, else ./mlflow.db (a reader without --output-dir)."""
    if named:
        return Store(absolute_uri(named), named_by)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return Store(absolute_uri(os.environ["MLFLOW_TRACKING_URI"]), FROM_ENV)
    folder, why = (output_dir, FROM_OUTPUT_DIR) if output_dir is not None else (".", FROM_HERE)
    return Store("sqlite:///" + str(Path(folder).resolve() / STORE_FILE), why)


def read_fix(store: Store) -> str:
    if store.why == FROM_ENV:
        return (
            "point MLFLOW_TRACKING_URI at the store the run logged to (its first lines name it), or unset it "
            "and pass --output-dir with the run's output dir"
        )
    if store.why in (FROM_OPTION, FROM_CONFIG):
        return f"give {store.why} the store the run logged to (its first lines name it)"
    return (
        "pass --output-dir with the run's --output-dir (scripts/run_local.sh's: outputs/local), or set "
        "MLFLOW_TRACKING_URI to the store the run logged to (its first lines name it)"
    )


# ------------------------------------------------------------------ a model in it
STORE_URIS = ("models:/", "runs:/")  # the URIs a store resolves (others name their files themselves)
NO_MODEL = "no MLflow model {uri} in this store: {reason}"
HOLDS_NONE = "this store holds no registered model"


def _parts(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS[/path] -> (NAME, ALIAS, None); models:/NAME/VERSION[/path] -> (NAME, None, VERSION)."""
    head, _, rest = uri[len("models:/") :].partition("/")
    if "@" in head:
        name, alias = head.split("@", 1)
        return name, alias, None
    return head, None, rest.split("/", 1)[0] or None


def _holds(client) -> str:
    try:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
    except Exception:  # noqa: BLE001 - only a hint
        return "see the store's models in `asc-ray mlflow-ui` (Models), or point"
    if not names:
        return f"{HOLDS_NONE}: point"
    return f"this store holds {', '.join(names)}: name one of those, or point"


def find_model(tracking_uri: str, uri: str) -> tuple[str, str]:
    """What `uri` (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH) names in the store at
    `tracking_uri` ("version 3 of asc-ray-baseline-split100") and where its files are (a URI no store needs
    to resolve: MLflow resolves models:/ in its process-wide registry, whatever tracking_uri it is given);
    an AscRayError when nothing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/") :].partition("/")
            root = client.get_run(run_id).info.artifact_uri.rstrip("/")
            return f"run {run_id}", f"{root}/{path}" if path else root
        name, alias, version = _parts(uri)
        if alias:
            v = client.get_model_version_by_alias(name, alias)
        elif version and version.isdigit():
            v = client.get_model_version(name, version)
        else:
            raise ValueError(
                f"give a version or an alias: models:/{name}/<version> or models:/{name}@<alias>"
            )
        source = client.get_model_version_download_uri(name, v.version)
        if source.startswith("models:/"):  # a logged model (MLflow 3): its own artifact location
            source = client.get_logged_model(source[len("models:/") :].split("/", 1)[0]).artifact_location
        return f"version {v.version} of {name}", source
    except Exception as e:  # noqa: BLE001 - MLflow's own types: unknown model, version, alias or run
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise AscRayError(
            NO_MODEL.format(uri=uri, reason=reason),
            path=tracking_uri,
            fix=f"{_holds(client)} --output-dir (or MLFLOW_TRACKING_URI) at the store of the run that trained "
            "the model (a run ends by listing its models:/ names)",
        ) from None
