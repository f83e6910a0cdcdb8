"""Experiment trackers (``log.trackers``): TensorBoard, MLflow and Weights & Biases, on global rank 0 only.

Each tracker is opened at the start of a run, gets batches of log rows from the metrics writer thread
through its own thread (observe/feeds.py: tracker calls never run on the step loop, and one that does not
answer within ``log.tracker_timeout_s`` is dropped with one warning) and the summary at the end. The id of
its run is kept in ``<run.dir>/trackers.json``, so a resumed run continues the same tracker run. A tracker
that cannot be reached at the start (``check_reachable``: one GET with a short timeout, authenticated the
way its client is; MLflow's own client retries for minutes) is a one-line warning, the run trains on
without it, and ``summary.json`` says so; one that fails later is dropped the same way. ``mlflow`` (~1 s)
and ``wandb`` are imported only when asked for. URIs are written and logged with their passwords masked.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Optional

from ...config import Config, dump, flat
from ...runtime import atomic
from ...runtime.redact import basic_auth, redact
from . import provenance as prov_mod
from .feeds import Feed
from .rowwriter import yield_gil

log = logging.getLogger("trainer")

STATE_FILE = "trackers.json"
SYSTEM = ("rss_mb", "cpu_percent", "gpu_mem_gb")  # row fields logged as system/<name>
REACH_TIMEOUT_S = 3.0
FINISH_CALLS = 10  # at the end of a run, wait at most this many log.tracker_timeout_s for a tracker


class Unreachable(RuntimeError):
    pass


def metric_items(kind: str, row: dict):
    """(tracker key, value) of one log row: train/<k>, eval/<k>, system/<k>; finite numbers only."""
    for k, v in row.items():
        if (
            k in ("step", "epoch", "samples", "time")
            or isinstance(v, bool)
            or not isinstance(v, (int, float))
        ):
            continue
        if not math.isfinite(v):
            continue
        if kind == "eval":
            yield f"eval/{k}", float(v)
        else:
            yield (f"system/{k}" if k in SYSTEM else f"train/{k}"), float(v)


def check_reachable(url: str, auth: Optional[str] = None) -> None:
    """A GET with a short timeout; any HTTP answer means the server is there. Credentials in the URL
    (``http://user:pass@host``, which urllib would take for a host name) go in an Authorization header, as
    the tracker's own client sends them; ``auth`` is such a header value given apart."""
    bare, basic = basic_auth(url)
    header = auth or basic
    try:
        req = urllib.request.Request(bare, headers={"Authorization": header} if header else {})
        urllib.request.urlopen(req, timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(redact(f"cannot reach {url} ({reason})")) from None


def mlflow_auth() -> Optional[str]:
    """The Authorization header MLflow's client sends from the environment (MLFLOW_TRACKING_USERNAME and
    _PASSWORD, or MLFLOW_TRACKING_TOKEN); credentials in the URI itself are handled by check_reachable."""
    user, pw = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and pw:
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode("ascii")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def params_of(cfg: Config) -> dict[str, str]:
    """The flattened config as strings (optim.lr -> "0.05"), what every tracker records as parameters."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat(cfg).items()}


# ----------------------------------------------------------------------------- TensorBoard


class TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: str, cfg: Config, prov: dict, saved: dict, step: int):
        from tensorboard.compat.proto.summary_pb2 import Summary  # tensorboard is optional
        from torch.utils.tensorboard import SummaryWriter  # ~0.2 s: only with TensorBoard on
        from torch.utils.tensorboard.summary import hparams

        self._summary = Summary
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        self._fw = self.writer._get_file_writer()
        self.state = dict(saved)
        if not saved.get("hparams_written"):
            # Into the run's own event files, once: SummaryWriter.add_hparams would open a sub-run per call
            # (per resume), and the UI would list one run as several.
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat(cfg).items()}
            metrics = {
                m: 0.0 for m in ("train/loss", "eval/loss", "eval/accuracy", "eval/perplexity", "eval/mse")
            }
            for s in hparams(hp, metrics):
                self._fw.add_summary(s)
            text = "\n".join("    " + line for line in dump(cfg).splitlines())
            self.writer.add_text("config", text, 0)
            self.writer.add_text(
                "provenance", "\n".join(f"    {k}: {v}" for k, v in prov_mod.flat(prov).items()), 0
            )
            self.state["hparams_written"] = True

    def log_batch(self, batch: list[tuple[str, dict]]) -> None:
        for kind, row in batch:
            vals = [self._summary.Value(tag=k, simple_value=v) for k, v in metric_items(kind, row)]
            self._fw.add_summary(self._summary(value=vals), row["step"])  # one event per row, not per value
            yield_gil()

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, summary: dict, code: int) -> None:
        self.writer.flush()
        self.writer.close()


# ----------------------------------------------------------------------------- MLflow


class MLflow:
    name = "mlflow"

    def __init__(self, run_dir: str, cfg: Config, prov: dict, saved: dict, step: int):
        # A server that goes away mid-run must not hold the writer thread for minutes (MLflow's default
        # is 7 retries with backoff): a few retries, a short timeout; users can still set their own.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        # its "View run at: URI" lines go to stdout with the URI as given (a password in it included)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # urllib3 warns of each retry; the one line that matters is ours when the tracker is dropped
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        os.environ.setdefault(
            "MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(min(10, cfg.log.tracker_timeout_s))))
        )
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith(("http://", "https://")):
            check_reachable(uri.rstrip("/") + "/health", mlflow_auth())
        import mlflow  # ~1 s: only when log.trackers names mlflow
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        self._Metric, self._Param, self._Tag = Metric, Param, RunTag
        self.client = MlflowClient(uri or mlflow.get_tracking_uri())
        params = params_of(cfg)
        run = None
        if saved.get("run_id"):
            try:
                run = self.client.get_run(saved["run_id"])
            except Exception as e:  # deleted on the server: a new run, said once
                log.warning(
                    "mlflow: run %s of this run dir not found (%s); starting a new one", saved["run_id"], e
                )
        if run is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            tags = {f"provenance.{k}": v[:5000] for k, v in prov_mod.flat(prov).items()}
            if prov.get("git", {}).get("commit"):
                tags["mlflow.source.git.commit"] = prov["git"]["commit"]
            run = self.client.create_run(
                exp_id, run_name=os.path.basename(os.path.abspath(run_dir)), tags=tags
            )
            self.run_id = run.info.run_id
            self._params(params)
        else:
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            old = run.data.params
            # MLflow params are immutable: a value changed on resume becomes a tag, a new key a param.
            self._params({k: v for k, v in params.items() if k not in old})
            changed = {k: v for k, v in params.items() if k in old and old[k] != v[:6000]}
            for k, v in changed.items():
                self.client.set_tag(self.run_id, f"resumed_at_step_{step}.{k}", v[:5000])
            self.client.set_tag(self.run_id, f"resumed_at_step_{step}.start_time", prov["start_time"])
        self.state = {"run_id": self.run_id, "tracking_uri": redact(self.client.tracking_uri)}

    def _params(self, params: dict[str, str]) -> None:
        items = [self._Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # the REST API takes at most 100 params per request
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_batch(self, batch: list[tuple[str, dict]]) -> None:
        now = time.time()
        metrics = [
            self._Metric(k, v, int(row.get("time", now) * 1000), int(row["step"]))
            for kind, row in batch
            for k, v in metric_items(kind, row)
        ]
        for i in range(0, len(metrics), 1000):  # at most 1000 metrics per request
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def flush(self) -> None:
        pass

    def finish(self, summary: dict, code: int) -> None:
        step = int(summary.get("steps") or 0)
        now = int(time.time() * 1000)
        nums = [
            self._Metric(f"summary/{k}", float(v), now, step)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        tags = [self._Tag(f"summary.{k}", str(v)[:5000]) for k, v in prov_mod.flat(summary).items()]
        self.client.log_batch(self.run_id, metrics=nums, tags=tags[:100])
        self.client.log_dict(self.run_id, summary, "summary.json")
        # preempted (75) is resumable: KILLED, as MLflow calls a run stopped from outside
        status = {0: "FINISHED", 75: "KILLED"}.get(code, "FAILED")
        self.client.set_terminated(self.run_id, status)


# ----------------------------------------------------------------------------- Weights & Biases


class Wandb:
    name = "wandb"

    def __init__(self, run_dir: str, cfg: Config, prov: dict, saved: dict, step: int):
        mode = os.environ.get("WANDB_MODE", "online")
        if mode not in ("offline", "disabled", "dryrun"):
            check_reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        import wandb  # several seconds with its service process: only when log.trackers names wandb

        run_id = saved.get("id") or uuid.uuid4().hex[:12]  # W&B run ids: lowercase letters and digits
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "torchrunner"),
            name=os.path.basename(os.path.abspath(run_dir)),
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or run_dir,
            config=params_of(cfg),
            settings=wandb.Settings(console="off", silent=True),
        )
        # W&B config is mutable: a value changed on resume replaces the old one (its history keeps both)
        self.run.config.update(params_of(cfg), allow_val_change=True)
        self.run.config.update({"provenance": prov_mod.flat(prov)}, allow_val_change=True)
        self.state = {"id": run_id}

    def log_batch(self, batch: list[tuple[str, dict]]) -> None:
        for kind, row in batch:
            self.run.log(dict(metric_items(kind, row)), step=int(row["step"]))

    def flush(self) -> None:
        pass

    def finish(self, summary: dict, code: int) -> None:
        self.run.summary.update(prov_mod.flat(summary))
        self.run.finish(exit_code=code)


KINDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


# ----------------------------------------------------------------------------- the set of them


class Trackers:
    """The trackers of one run (rank 0): open them, feed them (each on its own thread), finish them."""

    def __init__(self, names: list[str], run_dir: str, cfg: Config, prov: dict, step: int):
        self.run_dir = run_dir
        self.timeout_s = cfg.log.tracker_timeout_s
        self.open: dict[str, object] = {}
        self.feeds: dict[str, Feed] = {}
        self._status: dict[str, str] = {}
        saved = self._load()
        for name in names:
            try:
                self.open[name] = KINDS[name](run_dir, cfg, prov, saved.get(name, {}), step)
                self._status[name] = "ok"
            except ImportError as e:
                self._status[name] = f"not installed ({e.name or e})"
                log.warning("%s: not installed (pip install .[%s]); training without it", name, name)
            except Unreachable as e:
                self._status[name] = f"unreachable: {e}"
                log.warning("%s: %s; training without it (summary.json records this)", name, e)
            except Exception as e:  # refused, bad credentials, a client error: warn once, train on
                self._status[name] = redact(f"failed at start: {type(e).__name__}: {e}")
                log.warning("%s: failed at start (%s: %s); training without it", name, type(e).__name__, e)
        self.feeds = {name: Feed(name, self.timeout_s) for name in self.open}
        if self.open:
            state = {**saved, **{n: t.state for n, t in self.open.items() if getattr(t, "state", None)}}
            atomic.write_text(os.path.join(run_dir, STATE_FILE), json.dumps(state, indent=1))

    def _load(self) -> dict:
        try:
            with open(os.path.join(self.run_dir, STATE_FILE), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    @property
    def status(self) -> dict[str, str]:
        """Per tracker: "ok", or why it was not used or was dropped (summary.json's ``trackers``)."""
        out = dict(self._status)
        for name, feed in self.feeds.items():
            if feed.dropped:
                out[name] = redact(f"dropped during the run: {feed.dropped}")
        return out

    def sinks(self) -> dict:
        """The metrics writer's one sink for all trackers: it queues the batch and returns at once."""
        return {"trackers": self.log_batch} if self.open else {}

    def log_batch(self, batch: list[tuple[str, dict]]) -> None:
        for name, feed in self.feeds.items():
            feed.put("logging rows", self.open[name].log_batch, batch)

    def flush(self) -> None:
        for name, feed in self.feeds.items():
            feed.put("flush", self.open[name].flush)

    def settle(self) -> None:
        """Wait until the rows queued so far reached every tracker, or it was dropped for not answering
        (the end of a run, before summary.json records each tracker's status)."""
        for feed in self.feeds.values():
            feed.drain(FINISH_CALLS * self.timeout_s)

    def finish(self, summary: Optional[dict], code: int) -> None:
        """End every tracker's run: wait for each while its calls answer within log.tracker_timeout_s (and
        at most FINISH_CALLS of those in all: a slow tracker with a long queue does not hold the exit)."""
        for name, feed in self.feeds.items():
            feed.put("finishing the run", self.open[name].finish, summary or {}, code)
        for feed in self.feeds.values():
            feed.drain(FINISH_CALLS * self.timeout_s)
            feed.close()
        self.open.clear()
