"""Flower test helpers: run configs of the tiny test runs, an in-process grid, and a loopback deployment."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from flwr.app import Context, RecordDict
from flwr.app import MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedsq_hf.flower import client_app
from helpers import ROOT

BIN = os.path.dirname(sys.executable)


def run_config(backbone, dataset, output_dir, **extra):
    """The Flower run config of `helpers.tiny_args`'s run (2 clients, both trained each round)."""
    config = {"backbone": backbone, "dataset": dataset, "image-column": "img", "max-train-samples": 240,
              "max-eval-samples": 60, "image-size": 32, "num-clients": 2, "rounds": 2, "batch-size": 16,
              "partition": "dirichlet", "alpha": 1.0, "min-partition-size": 5, "lr": 0.01,
              "output-dir": str(output_dir), "node-wait": 30.0, "round-timeout": 300.0}
    return {**config, **{k.replace("_", "-"): v for k, v in extra.items()}}


class InProcessGrid:
    """A `Grid` whose nodes are sites in this process: each message runs the ClientApp's handler, as a
    SuperNode would in its own process (nothing is kept between messages but the sites' disks)."""

    HANDLERS = {MessageType.QUERY: client_app.query, MessageType.TRAIN: client_app.train,
                MessageType.EVALUATE: client_app.evaluate}

    def __init__(self, run_config, node_configs):
        self.run_config, self.node_configs = run_config, node_configs  # node id -> its node config
        self.sent = []  # (node, message type, round) of every message
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def get_node_ids(self):
        return list(self.node_configs)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent.append((node, message.metadata.message_type, int(message.content["fedsq"]["round"])))
            TaskIdentity.node_id = node
            context = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(),
                              run_config=self.run_config)
            replies.append(self.HANDLERS[message.metadata.message_type](message, context))
            TaskIdentity.node_id = 0
        return replies


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def write_app(folder, config):
    """A copy of `examples/flower` whose run config is `config` (`flwr run` only overrides keys the app has)."""
    shutil.copytree(os.path.join(ROOT, "examples", "flower"), folder, ignore=shutil.ignore_patterns("__pycache__"))
    text = open(os.path.join(folder, "pyproject.toml")).read()
    head = text[: text.index("[tool.flwr.app.config]")]
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items()]
    with open(os.path.join(folder, "pyproject.toml"), "w") as f:
        f.write(head + "[tool.flwr.app.config]\n" + "\n".join(lines) + "\n")
    return str(folder)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A SuperLink and one SuperNode per node config, on 127.0.0.1, each in its own process group (so that
    stopping one also stops the ClientApp processes it started); `stop()` stops every one by its PID.
    `simulation`: a SuperLink of Flower's simulation runtime (Ray) instead, and no SuperNodes."""

    def __init__(self, folder, node_configs=(), simulation=False):
        self.folder, self.procs, self.nodes = str(folder), [], {}
        self.home = os.path.join(self.folder, "flwr-home")
        os.makedirs(self.home, exist_ok=True)
        self.port = free_port()
        with open(os.path.join(self.home, "config.toml"), "w") as f:
            f.write(f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
                    "insecure = true\n")
        # The SuperLink and SuperNodes start flower-superexec / flwr-clientapp from PATH: this venv's. Every
        # site here shares one machine's cores: one thread each (two 2-thread OpenMP pools on 2 cores spin
        # against each other, and local training takes 20x as long).
        self.env = {**os.environ, "FLWR_HOME": self.home, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
                    "OMP_NUM_THREADS": "1"}
        try:
            link = self._start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port",
                                             str(self.port), "--disable-runtime-dependency-installation",
                                             *(["--simulation"] if simulation else [])])
            self._wait_healthy(link)
            for i, config in enumerate(node_configs):
                text = " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())
                self.nodes[i] = self._start(f"node{i}", [
                    "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port",
                    str(free_port()), "--node-config", text])
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, link, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and link.poll() is None:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            time.sleep(0.5)
        raise RuntimeError("the SuperLink did not start: " + open(os.path.join(self.folder, "superlink.log")).read()[-2000:])

    def _start(self, name, command):
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        proc = subprocess.Popen([os.path.join(BIN, command[0]), *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.folder, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc):
        """SIGKILL `proc` and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(proc)

    def flwr(self, *args, timeout=600):
        return subprocess.run([os.path.join(BIN, "flwr"), *args], env=self.env, cwd=self.folder, capture_output=True,
                              text=True, timeout=timeout)

    def run(self, app, timeout=900, on_line=None, *options):
        """`flwr run app --stream`; returns (its output, the run's status from `flwr ls`), as `flwr run`
        exits 0 whether or not the run failed. `on_line(line)` sees each line of the streamed log."""
        proc = subprocess.Popen([os.path.join(BIN, "flwr"), "run", str(app), "local", "--stream", *options], env=self.env,
                                cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        lines, deadline = [], time.monotonic() + timeout
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
            if time.monotonic() > deadline:
                self.kill(proc)
                raise TimeoutError("flwr run: " + "".join(lines[-30:]))
        proc.wait(timeout=60)
        return "".join(lines), (self.last_run() or {}).get("status")

    def last_run(self):
        runs = json.loads(self.flwr("ls", "local", "--format", "json").stdout)["runs"]
        return max(runs, key=lambda r: r["pending-at"]) if runs else None
