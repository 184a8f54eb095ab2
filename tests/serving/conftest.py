"""Fixtures of the service tests: one small trained model per session, MLflow stores that hold
it, and real ``bentoml serve`` processes on free loopback ports; for CRM tables, a model
trained on a small hand-made export (and on the X Education file where it is present),
logged as ``leadscore train --table`` logs it, and the services that answer with it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
X_EDUCATION = REPO.parent / "shared" / "data" / "x-education-leads" / "Leads.csv"
X_EDUCATION_CONFIG = REPO / "conf" / "datasets" / "x_education.yaml"
#: Quick table training for tests (the defaults take minutes on the X Education file).
FAST_TABLE_TRAINING = {"lgbm_params": {"learning_rate": 0.1}, "num_boost_round": 300,
                       "early_stopping_rounds": 30, "gate": {"min_train_positives": 50}}
API_KEY = "test-key-1"
NON_ASCII_KEY = "test-cl\u00e9-\u00fc-3"  # keys are UTF-8; also in latin-1: tests send that too
API_KEYS = f"{API_KEY}, test-key-2, {NON_ASCII_KEY}"
MAX_BODY = 1_000_000  # bytes, small enough to test the 413 cheaply
LARGE_BODY = 256 * 1024  # bytes: bodies above it take the lead-by-lead path (default 4 MB)


@dataclass
class Trained:
    """A model trained on small demo data, with the clean base it came from."""

    base: object  # features.loading.Base
    model: object  # training.model.LeadModel
    data_dir: Path


@pytest.fixture(scope="session")
def clean_env() -> Iterator[None]:
    """No team tracking server: every store here is an embedded SQLite one."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="leadscore-serving-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def trained(session_dir: Path, clean_env: None) -> Trained:
    """Demo data (2,000 contacts), its point-in-time training set and a LightGBM model."""
    from features.build import build_training_set, monthly_as_of_dates
    from features.loading import load_base
    from features.synthetic import generate, write_tables
    from training.config import GateConfig, TrainConfig
    from training.train import train

    data = session_dir / "data"
    write_tables(generate(2000, seed=11), data)
    base = load_base(data)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until, horizon_days=90)
    ts = build_training_set(base.contacts, base.events, base.stages, dates)
    config = TrainConfig(num_boost_round=60, early_stopping_rounds=20,
                         gate=GateConfig(min_train_positives=50))
    result = train(ts, config=config, truth=base.truth)
    return Trained(base=base, model=result.model, data_dir=data)


def register(store: Path, model: object, *, corrupt: bool = False) -> str:
    """Log ``model`` with the project's pyfunc flavour into the SQLite store in ``store``,
    register it as a version of ``lead-scoring`` and make it the champion (with ``corrupt``,
    its booster file is garbage by then)."""
    import mlflow

    from training.pyfunc import ARTIFACT, LeadScoringPyfunc
    from training.tracking import configure_tracking, promote

    configure_tracking(store)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="test"):
        model.save(Path(tmp) / ARTIFACT)
        info = mlflow.pyfunc.log_model(name="model", python_model=LeadScoringPyfunc(),
                                       artifacts={ARTIFACT: str(Path(tmp) / ARTIFACT)},
                                       registered_model_name="lead-scoring")
    version = str(info.registered_model_version)
    if corrupt:
        for booster in (store / "mlartifacts" / "models" / info.model_id).rglob("booster.txt"):
            booster.write_text("this is not a LightGBM model\n")
    promote(version)
    return version


@pytest.fixture(scope="session")
def store(session_dir: Path, trained: Trained) -> Path:
    """A store whose champion is the trained model (version 1)."""
    path = session_dir / "store"
    register(path, trained.model)
    return path


@pytest.fixture(scope="session")
def corrupt_store(session_dir: Path, trained: Trained, store: Path) -> Path:
    """A store whose champion's booster file is garbage."""
    path = session_dir / "corrupt-store"
    register(path, trained.model, corrupt=True)
    return path


@pytest.fixture(scope="session")
def empty_store(session_dir: Path, clean_env: None) -> Path:
    """A store with no registered model."""
    from training.tracking import configure_tracking

    path = session_dir / "empty-store"
    configure_tracking(path)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    headers: dict[str, str]

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def launch_server(workdir: Path, logs: Path, *, keys: str = "", reload_seconds: float = 0,
                  extra_env: dict[str, str] | None = None, cli: bool = False) -> Server:
    """Start ``bentoml serve serving.service:LeadScoringService`` (or, with ``cli``,
    ``leadscore serve --workdir``) on a free loopback port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({
        "LEADSCORE_WORKDIR": str(workdir),
        "LEADSCORE_API_KEYS": keys,
        "LEADSCORE_RELOAD_SECONDS": str(reload_seconds),
        "LEADSCORE_MAX_BODY_BYTES": str(MAX_BODY),
        "LEADSCORE_LARGE_BODY_BYTES": str(LARGE_BODY),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(logs / "bentoml-home"),
        **(extra_env or {}),
    })
    log = logs / f"server-{port}.log"
    if cli:
        cmd = [str(Path(sys.executable).with_name("leadscore")), "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workdir", str(workdir)]
    else:
        cmd = [str(Path(sys.executable).with_name("bentoml")), "serve",
               "serving.service:LeadScoringService", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Server(f"http://127.0.0.1:{port}", process, log,
                  {"Authorization": f"Bearer {keys.split(',')[0].strip()}"} if keys else {})


def wait_up(server: Server, timeout: float = 120) -> Server:
    """Return once ``/healthz`` answers (the scorer may still be loading: see ``wait_ready``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"server did not come up:\n{server.log_text()[-3000:]}")


def start_server(workdir: Path, logs: Path, **kwargs) -> Server:
    return wait_up(launch_server(workdir, logs, **kwargs))


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the service never became ready")


def stop_server(server: Server) -> None:
    """Stop the server's process group (the arbiter and its worker), which we started."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def servers(store: Path, corrupt_store: Path, empty_store: Path, session_dir: Path
            ) -> Iterator[dict[str, Server]]:
    """Three services started side by side (start-up is the slow part): ``main`` (the trained
    champion, API keys), ``corrupt`` (champion artifact unreadable; started by ``leadscore
    serve``) and ``empty`` (no model yet; the champion alias is polled every second)."""
    started = {
        "main": launch_server(store, session_dir, keys=API_KEYS),
        "corrupt": launch_server(corrupt_store, session_dir, cli=True),  # via `leadscore serve`
        "empty": launch_server(empty_store, session_dir, reload_seconds=1),
    }
    try:
        for srv in started.values():
            wait_up(srv)
        yield started
    finally:
        for srv in started.values():
            stop_server(srv)


@pytest.fixture(scope="session")
def server(servers: dict[str, Server]) -> Server:
    """The service with the trained champion and API keys."""
    wait_ready(servers["main"])
    return servers["main"]


# -- CRM tables ---------------------------------------------------------------------------------
#: The export's columns the service tests use: an id, personal data, four features, a
#: post-contact column and the target.
SHOP_COLUMNS = ["Lead Key", "E-mail Address", "Source Channel", "Pages Seen", "Minutes On Site",
                "Industry Sector", "Deal Stage", "Outcome"]

SHOP_DATASET = {
    "name": "shop",
    "id_column": "Lead Key",
    "target": {"column": "Outcome", "positive": "Won"},
    "separator": ";",
    "decimal": ",",
    "placeholders": ["-- select --", "N/A"],
    "exclude": {"E-mail Address": "personal data"},
    "post_contact": {"Deal Stage": "set by sales after the first call"},
    "cross_fit_folds": 0,
    "training": FAST_TABLE_TRAINING,
}


@dataclass
class Table:
    """A model trained on a CRM table, the rows it was read from and its MLflow store."""

    frame: object  # pandas.DataFrame, as training.crm.read_table gives it
    model: object  # training.model.LeadModel (input_kind "table")
    store: Path
    version: str


def train_and_register_table(table: Path, dataset: dict, store: Path) -> Table:
    """Train on ``table`` as ``leadscore train --table`` does (``train_table``, then
    ``log_table_run``: run, signature, dataset config, registration, gate) into the SQLite
    store in ``store``; the version is made champion if the gate kept it a challenger."""
    from training.crm import log_table_run, parse_dataset_config, read_table, train_table
    from training.tracking import configure_tracking, promote

    config = parse_dataset_config(dataset)
    frame = read_table(table, config)
    trained = train_table(frame, config)
    configure_tracking(store)
    summary = log_table_run(trained, frame, source=str(table))
    if not summary["promoted"]:
        promote(str(summary["version"]))
    return Table(frame, trained.model, store, str(summary["version"]))


@pytest.fixture(scope="session")
def shop_table(session_dir: Path, clean_env: None, crm_export) -> Table:
    """The hand-made export (';'-separated CSV) and a model trained on it, champion of its store."""
    path = session_dir / "shop.csv"
    crm_export(1500, seed=4)[SHOP_COLUMNS].to_csv(path, sep=";", index=False)
    return train_and_register_table(path, SHOP_DATASET, session_dir / "shop-store")


@pytest.fixture(scope="session")
def x_education_table(session_dir: Path, clean_env: None) -> Table | None:
    """The X Education file with the project's dataset config (quick training settings); None
    where the file is absent (its licence is unknown: it is never copied into the repo)."""
    import yaml

    if not X_EDUCATION.exists():
        return None
    dataset = yaml.safe_load(X_EDUCATION_CONFIG.read_text())
    dataset.update(cross_fit_folds=0, training=FAST_TABLE_TRAINING)
    return train_and_register_table(X_EDUCATION, dataset, session_dir / "x-education-store")


@pytest.fixture(scope="session")
def table_servers(shop_table: Table, x_education_table: Table | None, session_dir: Path
                  ) -> Iterator[dict[str, Server]]:
    """Services whose champion is a table model, started side by side: ``shop`` (API keys
    off, loopback) and, where the file is present, ``x-education``."""
    started = {"shop": launch_server(shop_table.store, session_dir)}
    if x_education_table is not None:
        started["x-education"] = launch_server(x_education_table.store, session_dir)
    try:
        for srv in started.values():
            wait_up(srv)
            wait_ready(srv)
        yield started
    finally:
        for srv in started.values():
            stop_server(srv)


@dataclass
class Kit:
    """What the tests need besides fixtures: constants and the server/registry helpers."""

    api_key: str = API_KEY
    non_ascii_key: str = NON_ASCII_KEY
    max_body: int = MAX_BODY
    large_body: int = LARGE_BODY
    start_server = staticmethod(start_server)
    launch_server = staticmethod(launch_server)
    wait_up = staticmethod(wait_up)
    stop_server = staticmethod(stop_server)
    wait_ready = staticmethod(wait_ready)
    register = staticmethod(register)


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()
