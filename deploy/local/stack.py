"""The embedded stack: Tansu (Kafka protocol), SeaweedFS (S3) and tritonserver, on 127.0.0.1.

Everything lives in the state folder (``AUTOLABEL_STATE_DIR``, default ``.autolabel/``)::

    stack.json     components, PIDs, ports (what `down` and `status` read)
    stack.env      all a client needs as AUTOLABEL_* (endpoints, bucket, S3 keys, topics); owner-only
    logs/*.log     one log per component
    s3/            SeaweedFS data (the broker keeps its messages there too)
    triton/        a writable copy of the tritonserver tree from nvidia-pytriton

The broker stores its log in the S3 bucket ``tansu`` so messages and committed offsets
survive a SIGKILL of the broker and a restart of S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.local.binaries import tansu_binary, triton_environment, tritonserver_tree, weed_binary
from deploy.local.processes import (
    StackError,
    free_ports,
    http_ok,
    pid_alive,
    pid_matches,
    port_is_free,
    stop_pid,
    tail,
    wait_until,
)
from services.settings import Settings

BROKER_BUCKET = "tansu"
COMPONENTS = ("s3", "broker", "triton")
STACK_TOPICS = ("topic_images", "topic_labels", "topic_review", "topic_dlq", "topic_reviewed")  # in stack.env too
SEAWEED_PORTS = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin", "admin_grpc", "debug")


@dataclass
class ComponentState:
    name: str
    pid: int
    binary: str
    ports: dict[str, int]
    log: str
    endpoint: str


@dataclass
class StackState:
    components: dict[str, ComponentState] = field(default_factory=dict)
    model_repository: str = ""
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "StackState":
        data = json.loads(text)
        comps = {k: ComponentState(**v) for k, v in data.get("components", {}).items()}
        return cls(comps, data.get("model_repository", ""), data.get("started_at", 0.0))


# --- the stack ----------------------------------------------------------------------


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.state_file = self.state_dir / "stack.json"
        self.env_file = self.state_dir / "stack.env"
        self.log_dir = self.state_dir / "logs"

    # state ---------------------------------------------------------------------------
    def read_state(self) -> StackState | None:
        if not self.state_file.is_file():
            return None
        try:
            return StackState.from_json(self.state_file.read_text())
        except (ValueError, TypeError, KeyError) as exc:
            raise StackError(f"{self.state_file} is unreadable ({exc}); remove it after stopping stray processes") from None

    def _write_state(self, state: StackState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.state_file)

    def running(self, state: StackState | None = None) -> dict[str, bool]:
        state = state or self.read_state()
        if state is None:
            return {}
        return {name: pid_matches(c.pid, c.binary) for name, c in state.components.items()}

    # up ------------------------------------------------------------------------------
    def up(self, timeout: float | None = None, log=print) -> StackState:  # noqa: ANN001
        timeout = timeout or self.settings.stack_timeout_s
        existing = self.read_state()
        if existing is not None:
            # the core components; the review app `demo --keep-running` adds is not one of them
            alive = {n: a for n, a in self.running(existing).items() if n in COMPONENTS}
            if alive and all(alive.values()):
                raise StackAlreadyRunning(existing)
            if any(alive.values()):
                up_now = ", ".join(n for n, a in alive.items() if a)
                raise StackError(f"the stack is partly running ({up_now}); run `autolabel stack down` first")
        repo = self.settings.model_repository.resolve()
        if not repo.is_dir():
            raise StackError(f"model repository {repo} does not exist: run `autolabel models build` or set AUTOLABEL_MODEL_REPOSITORY")
        binaries = {"s3": weed_binary(), "broker": tansu_binary()}
        triton_dir = tritonserver_tree(self.state_dir)
        ports = self._choose_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        state = StackState(model_repository=str(repo), started_at=time.time())
        deadline = time.monotonic() + timeout
        try:
            state.components["s3"] = self._start_s3(binaries["s3"], ports, deadline)
            self._write_state(state)
            log(f"s3      ready  {state.components['s3'].endpoint}")
            self._ensure_buckets(state.components["s3"].endpoint)
            state.components["broker"] = self._start_broker(binaries["broker"], ports, state.components["s3"].endpoint, deadline)
            self._write_state(state)
            log(f"broker  ready  {state.components['broker'].endpoint}")
            self._ensure_topics(state.components["broker"].endpoint)
            state.components["triton"] = self._start_triton(triton_dir, repo, ports, deadline)
            self._write_state(state)
            log(f"triton  ready  {state.components['triton'].endpoint}")
        except BaseException:
            self._stop_components(state)
            self.state_file.unlink(missing_ok=True)
            raise
        self._write_env(state)
        return state

    def _choose_ports(self) -> dict[str, int]:
        s = self.settings
        wanted = {
            "broker": s.stack_broker_port,
            "s3": s.stack_s3_port,
            "triton_http": s.stack_triton_http_port,
            "triton_grpc": s.stack_triton_grpc_port,
            "triton_metrics": s.stack_triton_metrics_port,
        }
        for name, port in wanted.items():
            if port and not port_is_free(port):
                env = f"AUTOLABEL_STACK_{name.upper()}_PORT"
                raise StackError(f"port {port} ({name}) is in use: free it, or set {env} to another port (0 picks a free one)")
        taken = {p for p in wanted.values() if p}
        extra_names = [n for n in SEAWEED_PORTS if n != "s3"]
        fresh = iter(free_ports(len(wanted) + len(extra_names), avoid=taken))
        ports = {name: port or next(fresh) for name, port in wanted.items()}
        ports.update({f"s3_{n}" if not n.startswith("s3") else n: next(fresh) for n in extra_names})
        return ports

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, Path]:
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(  # noqa: S603 - our own binaries
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        log_file.close()
        return proc, log_path

    def _await(self, name: str, proc: subprocess.Popen, log_path: Path, check, deadline: float) -> None:  # noqa: ANN001
        ok = wait_until(check, max(1.0, deadline - time.monotonic()), alive=lambda: proc.poll() is None)
        if ok:
            return
        code = proc.poll()
        if code is None:
            stop_pid(proc.pid)
            raise StackError(f"{name} did not become healthy in time; see {log_path}:\n{tail(log_path)}")
        raise StackError(f"{name} exited with code {code} while starting; see {log_path}:\n{tail(log_path)}")

    def _start_s3(self, binary: Path, ports: dict[str, int], deadline: float) -> ComponentState:
        s = self.settings
        data = self.state_dir / "s3"
        data.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "s3.json"
        identity = {
            "identities": [{
                "name": "autolabel",
                "credentials": [{"accessKey": s.s3_access_key_id.get_secret_value(), "secretKey": s.s3_secret_access_key.get_secret_value()}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        }
        config.write_text(json.dumps(identity))
        config.chmod(0o600)
        p = ports
        argv = [
            str(binary), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            "-s3.allowDeleteBucketNotEmpty=false", "-s3.autoCreateBucket=false",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-master.port={p['s3_master']}", f"-master.port.grpc={p['s3_master_grpc']}",
            f"-volume.port={p['s3_volume']}", f"-volume.port.grpc={p['s3_volume_grpc']}",
            f"-filer.port={p['s3_filer']}", f"-filer.port.grpc={p['s3_filer_grpc']}",
            f"-admin.port={p['s3_admin']}", f"-admin.port.grpc={p['s3_admin_grpc']}",
            f"-debug.port={p['s3_debug']}",
        ]
        proc, log_path = self._spawn("s3", argv, cwd=self.state_dir)
        endpoint = f"http://127.0.0.1:{p['s3']}"
        self._await("s3 (SeaweedFS)", proc, log_path, lambda: http_ok(f"{endpoint}/healthz"), deadline)
        used = {k: v for k, v in p.items() if k.startswith("s3")}
        return ComponentState("s3", proc.pid, str(binary), used, str(log_path), endpoint)

    def _s3_client(self, endpoint: str):  # noqa: ANN202
        from services.storage import make_s3_client

        return make_s3_client(self.settings.model_copy(update={"s3_endpoint_url": endpoint}))

    def _ensure_buckets(self, endpoint: str) -> None:
        client = self._s3_client(endpoint)
        for bucket in (self.settings.s3_bucket, BROKER_BUCKET):
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            except client.exceptions.BucketAlreadyExists:
                pass

    def _start_broker(self, binary: Path, ports: dict[str, int], s3_endpoint: str, deadline: float) -> ComponentState:
        s = self.settings
        url = f"tcp://127.0.0.1:{ports['broker']}"
        env = dict(os.environ)
        env.update({
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": s.s3_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": s.s3_secret_access_key.get_secret_value(),
            "AWS_DEFAULT_REGION": s.s3_region,
            "CLUSTER_ID": "autolabel",
            "RUST_LOG": env.get("RUST_LOG", "warn"),
        })
        argv = [
            str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", f"s3://{BROKER_BUCKET}/" if s.stack_broker_storage == "s3" else "memory://tansu/",
        ]
        proc, log_path = self._spawn("broker", argv, env=env, cwd=self.state_dir)
        bootstrap = f"127.0.0.1:{ports['broker']}"
        self._await("broker (Tansu)", proc, log_path, lambda: _broker_ready(bootstrap), deadline)
        return ComponentState("broker", proc.pid, str(binary), {"broker": ports["broker"]}, str(log_path), bootstrap)

    def _ensure_topics(self, bootstrap: str) -> None:
        from services.topics import ensure_topics

        ensure_topics(self.settings.model_copy(update={"kafka_bootstrap_servers": bootstrap}))

    def _start_triton(self, tree: Path, repo: Path, ports: dict[str, int], deadline: float) -> ComponentState:
        argv = [
            str(tree / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={tree / 'backends'}",
            f"--http-port={ports['triton_http']}", f"--grpc-port={ports['triton_grpc']}",
            f"--metrics-port={ports['triton_metrics']}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            "--model-control-mode=explicit",
            *[f"--load-model={m.strip()}" for m in (self.settings.stack_triton_models or "*").split(",") if m.strip()],
            "--exit-on-error=false", "--strict-readiness=true", "--log-verbose=0",
        ]
        proc, log_path = self._spawn("triton", argv, env=triton_environment(), cwd=self.state_dir)
        http = f"http://127.0.0.1:{ports['triton_http']}"
        self._await("triton", proc, log_path, lambda: http_ok(f"{http}/v2/health/ready"), deadline)
        used = {"http": ports["triton_http"], "grpc": ports["triton_grpc"], "metrics": ports["triton_metrics"]}
        return ComponentState("triton", proc.pid, str(tree / "bin" / "tritonserver"), used, str(log_path), http)

    def _write_env(self, state: StackState) -> None:
        """All a client needs (docs/events.md, "Producing uploads"): endpoints, bucket, the S3 keys
        the stack's S3 accepts, the topics it created. Owner-only: it holds the S3 secret."""
        s = self.settings
        c = state.components
        grpc = c["triton"].ports["grpc"]
        http = c["triton"].ports["http"]
        url = f"127.0.0.1:{grpc}" if s.triton_protocol.value == "grpc" else f"127.0.0.1:{http}"
        lines = [
            "# written by `autolabel stack up`; removed by `autolabel stack down`",
            f"AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS={c['broker'].endpoint}",
            f"AUTOLABEL_S3_ENDPOINT_URL={c['s3'].endpoint}",
            f"AUTOLABEL_S3_BUCKET={s.s3_bucket}",
            f"AUTOLABEL_S3_REGION={s.s3_region}",
            f"AUTOLABEL_S3_ACCESS_KEY_ID={s.s3_access_key_id.get_secret_value()}",
            f"AUTOLABEL_S3_SECRET_ACCESS_KEY={s.s3_secret_access_key.get_secret_value()}",
            f"AUTOLABEL_TRITON_URL={url}",
            f"AUTOLABEL_MODEL_REPOSITORY={state.model_repository}",
            *(f"AUTOLABEL_{name.upper()}={getattr(s, name)}" for name in STACK_TOPICS),
        ]
        tmp = self.env_file.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write("\n".join(lines) + "\n")
        tmp.replace(self.env_file)

    def env(self) -> dict[str, str]:
        """The variables of ``stack.env`` (empty when the stack is not up)."""
        lines = self.env_file.read_text().splitlines() if self.env_file.is_file() else []
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    # down / status -----------------------------------------------------------------------
    def down(self, log=print) -> list[str]:  # noqa: ANN001
        state = self.read_state()
        if state is None:
            log("the stack is not running (no stack.json)")
            return []
        stopped = self._stop_components(state, log)
        self.state_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)
        return stopped

    def _stop_components(self, state: StackState, log=lambda _m: None) -> list[str]:  # noqa: ANN001
        stopped = []
        # reverse start order: Triton, broker (flushes to S3), S3
        for name in reversed(list(state.components)):
            comp = state.components[name]
            if pid_matches(comp.pid, comp.binary):
                if not stop_pid(comp.pid):
                    raise StackError(f"could not stop {name} (pid {comp.pid})")
                log(f"{name:<7} stopped (pid {comp.pid})")
                stopped.append(name)
            elif pid_alive(comp.pid):
                log(f"{name:<7} pid {comp.pid} now belongs to another program; left alone")
            else:
                log(f"{name:<7} was not running")
        return stopped

    def restart_component(self, name: str, timeout: float | None = None) -> ComponentState:
        """Start one stopped component again on its recorded ports (fault tests, recovery)."""
        state = self.read_state()
        if state is None or name not in state.components:
            raise StackError(f"{name} is not part of a running stack")
        comp = state.components[name]
        if pid_matches(comp.pid, comp.binary):
            return comp
        deadline = time.monotonic() + (timeout or self.settings.stack_timeout_s)
        if name == "s3":
            ports = {k: v for k, v in comp.ports.items()}
            new = self._start_s3(Path(comp.binary), ports, deadline)
        elif name == "broker":
            ports = {"broker": comp.ports["broker"]}
            new = self._start_broker(Path(comp.binary), ports, state.components["s3"].endpoint, deadline)
        else:
            ports = {"triton_http": comp.ports["http"], "triton_grpc": comp.ports["grpc"], "triton_metrics": comp.ports["metrics"]}
            new = self._start_triton(Path(comp.binary).parent.parent, Path(state.model_repository), ports, deadline)
        state.components[name] = new
        self._write_state(state)
        return new

    def status(self) -> list[dict[str, object]]:
        state = self.read_state()
        rows: list[dict[str, object]] = []
        if state is None:
            return rows
        for name, comp in state.components.items():
            running = pid_matches(comp.pid, comp.binary)
            healthy = running and _healthy(name, comp)
            rows.append({"component": name, "pid": comp.pid, "endpoint": comp.endpoint, "running": running, "healthy": healthy, "log": comp.log})
        return rows


class StackAlreadyRunning(StackError):
    def __init__(self, state: StackState) -> None:
        pids = ", ".join(f"{n} pid {c.pid}" for n, c in state.components.items())
        super().__init__(f"the stack is already running ({pids}); `autolabel stack status` shows it")
        self.state = state


def _broker_ready(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=[bootstrap], request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _healthy(name: str, comp: ComponentState) -> bool:
    if name == "s3":
        return http_ok(f"{comp.endpoint}/healthz")
    if name == "triton":
        return http_ok(f"{comp.endpoint}/v2/health/ready")
    if name == "review":  # the review app `autolabel demo --keep-running` adds
        return http_ok(f"{comp.endpoint}/healthz")
    return _broker_ready(comp.endpoint)
