"""docker-compose.yml, Dockerfile, .env.example, Prometheus and Grafana files, checked
without a container engine against the project's settings and model contract.

`docker compose config` itself runs only where an engine answers (test at the end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import SecretStr
from settings_helpers import default_of, field_of

from services.settings import ENV_PREFIX, TASKS, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_DIR = ROOT / "deploy" / "compose"
PROMETHEUS = COMPOSE_DIR / "prometheus" / "prometheus.yml"
DASHBOARDS = COMPOSE_DIR / "grafana" / "dashboards"
PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"

# ${NAME}, ${NAME:-default}, ${NAME-default}
INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
WORKER_METRICS = (
    "autolabel_events_in_total",
    "autolabel_events_out_total",
    "autolabel_dead_letters_total",
    "autolabel_e2e_latency_seconds",
    "autolabel_triton_latency_seconds",
    "autolabel_batch_size",
    "autolabel_in_flight",
    # quality (docs/quality.md): live precision from audits, drift, the auto-accept rate, the audit backlog
    "autolabel_live_precision_upper",
    "autolabel_drift_psi",
    "autolabel_task_labels_total",
    "autolabel_audit_backlog",
)
THIRD_PARTY_METRICS = ("kafka_consumergroup_lag", "nv_inference_queue_duration_us", "nv_gpu_utilization")
# The last Triton release with the TensorFlow backend (deprecated in 25.03).
LAST_TF_TRITON = (25, 2)
# Published ports bind to this variable's address, 127.0.0.1 unless .env opens them.
PUBLISH_ADDRESS = ("PUBLISH_ADDRESS", "127.0.0.1")
# A short-syntax port: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL] (or CONTAINER_PORT alone).
PORT_SPEC = re.compile(r"^(?:(?:(?P<ip>.+):)?(?P<host>\d+):)?(?P<container>\d+)(?:/(?:tcp|udp))?$")


# --- helpers ---------------------------------------------------------------------------


def parse_setting(var: str, raw: str) -> object:
    """The value `raw` gives the setting named by env var `var` (validated by Settings)."""
    name = field_of(var)
    value = getattr(Settings(_env_file=None, **{name: raw}), name)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return getattr(value, "value", value)


def interpolation_default(raw: str) -> str:
    """`${VAR:-d}` -> d; anything else unchanged."""
    m = INTERP.fullmatch(raw)
    return (m.group(2) or "") if m else raw


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when there is none), ignoring any digest."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert "@sha256:" in image or tag, f"{where}: image {image!r} has no tag"
    if tag is not None:
        assert tag != "latest", f"{where}: image {image!r} uses latest"
        assert re.search(r"\d", tag), f"{where}: image {image!r} tag is not a version"


def env_dict(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict) -> dict[int, tuple[str, int | None]]:
    """container port -> (host address as written, host port) of a service's `ports`."""
    out: dict[int, tuple[str, int | None]] = {}
    for spec in service.get("ports", []):
        if isinstance(spec, dict):  # long syntax
            host = spec.get("published")
            out[int(spec["target"])] = (str(spec.get("host_ip", "")), int(host) if host else None)
            continue
        m = PORT_SPEC.match(str(spec))
        assert m, f"unparsed port {spec!r}"
        out[int(m.group("container"))] = (m.group("ip") or "", int(m.group("host")) if m.group("host") else None)
    return out


def flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def project_services(services: dict) -> dict[str, dict]:
    """Services that run the project image (worker, CLI, model builds, topic-init)."""
    found = {n: s for n, s in services.items() if str(s.get("image", "")).split(":")[0] in ("autolabel", "autolabel-ml")}
    assert {"worker", "topic-init", "model-build", "model-build-cpu", "cli"} <= set(found)
    return found


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- compose: structure ----------------------------------------------------------------


def test_compose_has_every_component(services: dict) -> None:
    required = {
        "kafka", "topic-init", "minio", "bucket-init", "model-build", "triton",
        "model-build-cpu", "triton-cpu", "worker", "kafka-exporter", "prometheus", "grafana",
    }
    missing = required - set(services)
    assert not missing, f"compose services missing: {sorted(missing)}"
    for name, svc in services.items():
        assert isinstance(svc, dict) and ("image" in svc or "build" in svc), name


def test_every_compose_image_is_pinned(services: dict, pyproject: dict) -> None:
    for name, svc in services.items():
        assert "image" in svc, f"{name}: name the image (with a tag), even when built"
        assert_pinned(svc["image"], f"compose service {name}")
    # The project's images carry the project's version.
    version = pyproject["project"]["version"]
    for name, svc in services.items():
        repo = svc["image"].split(":")[0]
        if repo in ("autolabel", "autolabel-ml"):
            assert image_tag(svc["image"]) == version, f"{name}: tag != pyproject version {version}"


def test_kafka_is_kraft_with_explicit_topics(services: dict) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_dict(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("zookeeper" in n for n in services), "KRaft: no ZooKeeper"
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false", "topics come from topic-init"
    # topic-init gets an explicit partition count and gates the workers.
    init_env = env_dict(services["topic-init"])
    assert "AUTOLABEL_TOPIC_PARTITIONS" in init_env
    assert services["worker"]["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["bucket-init"]["condition"] == "service_completed_successfully"


def test_topic_init_uses_project_topic_code(services: dict) -> None:
    entry = services["topic-init"]["entrypoint"]
    assert "/usr/local/bin/autolabel-init-topics" in entry
    assert "COPY deploy/compose/init_topics.py /usr/local/bin/autolabel-init-topics" in DOCKERFILE.read_text()
    src = (COMPOSE_DIR / "init_topics.py").read_text()
    import services.topics as topics

    for name in re.findall(r"from services\.topics import (.+)", src)[0].split(","):
        assert hasattr(topics, name.strip()), f"services.topics has no {name.strip()}"
    # Every topic the settings name is one topic-init creates.
    s = Settings(_env_file=None)
    assert set(topics.topic_names(s)) == {s.topic_images, s.topic_labels, s.topic_review, s.topic_dlq, s.topic_reviewed}


def test_bucket_init_creates_the_settings_bucket(services: dict) -> None:
    init = services["bucket-init"]
    assert init["image"].startswith("minio/mc:")
    env = env_dict(init)
    assert interpolation_default(env["AUTOLABEL_S3_BUCKET"]) == default_of("s3_bucket")
    script = (COMPOSE_DIR / "init-bucket.sh").read_text()
    assert 'mc mb --ignore-existing "store/${AUTOLABEL_S3_BUCKET}"' in script
    assert "http://minio:9000" in script


def test_worker_can_scale(services: dict) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "--scale worker=N needs no fixed container name"
    assert not worker.get("ports"), "--scale worker=N: published ports would collide"
    assert worker.get("command") == ["worker"]
    assert "profiles" not in worker


def test_published_ports_are_local_by_default(services: dict) -> None:
    """Kafka (PLAINTEXT), MinIO (root keys), Triton (model load/unload API), Prometheus and
    Grafana answer on 127.0.0.1 only unless PUBLISH_ADDRESS in .env says otherwise."""
    published = {name: published_ports(svc) for name, svc in services.items() if svc.get("ports")}
    assert {"kafka", "minio", "triton", "triton-cpu", "prometheus", "grafana"} <= set(published)
    for name, ports in published.items():
        for container, (ip, host) in ports.items():
            m = INTERP.fullmatch(ip)
            assert m and (m.group(1), m.group(2)) == PUBLISH_ADDRESS, (
                f"{name}: port {container} binds to {ip or 'every interface'}, not ${{{PUBLISH_ADDRESS[0]}:-{PUBLISH_ADDRESS[1]}}}"
            )
            assert host is not None, f"{name}: port {container} without a host port"


def test_grafana_admin_password_has_no_default(services: dict) -> None:
    env = env_dict(services["grafana"])
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    # ${VAR:?message}: compose refuses to start without a non-empty value.
    m = re.fullmatch(r"\$\{(GRAFANA_ADMIN_PASSWORD):\?[^}]+\}", password)
    assert m, f"Grafana's admin password must be required from .env, not {password!r}"
    assert "admin" not in INTERP.sub("", password)
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"


def test_env_example_documents_the_compose_variables() -> None:
    """Variables compose interpolates that are not settings (PUBLISH_ADDRESS,
    GRAFANA_ADMIN_PASSWORD) are explained in .env.example too."""
    text = COMPOSE_FILE.read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = ENV_EXAMPLE.read_text()
    for name in sorted(n for n in names if not n.startswith(ENV_PREFIX)):
        assert re.search(rf"^#?\s*{name}=", example, re.M), f".env.example does not document {name}"
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M), "the required password: a line to fill"
    assert re.search(rf"^# {PUBLISH_ADDRESS[0]}={re.escape(PUBLISH_ADDRESS[1])}$", example, re.M)


# --- compose: settings ------------------------------------------------------------------


def test_every_autolabel_variable_in_compose_is_a_setting(compose: dict, services: dict) -> None:
    text = COMPOSE_FILE.read_text()
    for var in set(re.findall(r"\b(AUTOLABEL_[A-Z0-9_]+)\b", text)):
        assert field_of(var) in Settings.model_fields, f"docker-compose.yml: {var} is not a setting"
    for name, svc in services.items():
        for var in env_dict(svc):
            if var.startswith(ENV_PREFIX):
                assert field_of(var) in Settings.model_fields, f"{name}: {var} is not a setting"


def test_project_containers_set_only_valid_settings(project_services: dict) -> None:
    for name, svc in project_services.items():
        env = env_dict(svc)
        for var, raw in env.items():
            assert var.startswith(ENV_PREFIX), f"{name}: {var} is not an autolabel setting"
            parse_setting(var, interpolation_default(raw))  # raises if invalid


def test_interpolation_defaults_equal_settings_defaults() -> None:
    """`${AUTOLABEL_X:-d}`: d is the settings default; the value lives in one place."""
    found = INTERP.findall(COMPOSE_FILE.read_text())
    assert found
    for var, default in found:
        if not var.startswith(ENV_PREFIX):
            continue
        assert parse_setting(var, default) == default_of(field_of(var)), (
            f"docker-compose.yml: ${{{var}:-{default}}} differs from the settings default"
        )


def test_minio_credentials_are_the_workers(services: dict) -> None:
    minio = env_dict(services["minio"])
    worker = env_dict(services["worker"])
    assert minio["MINIO_ROOT_USER"] == worker["AUTOLABEL_S3_ACCESS_KEY_ID"]
    assert minio["MINIO_ROOT_PASSWORD"] == worker["AUTOLABEL_S3_SECRET_ACCESS_KEY"]
    assert len(interpolation_default(minio["MINIO_ROOT_PASSWORD"])) >= 8, "MinIO wants 8+ characters"


# --- compose: ports and names agree -----------------------------------------------------


def test_worker_endpoints_point_at_the_compose_services(services: dict) -> None:
    env = env_dict(services["worker"])

    # Kafka: the bootstrap address is a listener the broker advertises.
    advertised = env_dict(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    addrs = {a.split("://", 1)[1] for a in advertised}
    for server in env["AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert server in addrs, f"{server} is not an advertised listener {sorted(addrs)}"
        assert host_port(server)[0] in services

    # S3: MinIO's API port.
    url = urlparse(env["AUTOLABEL_S3_ENDPOINT_URL"])
    assert url.hostname == "minio" and url.port == 9000
    assert published_ports(services["minio"])[9000][1] == 9000

    # Triton: the settings' protocol and port (default gRPC on 8001) on both profiles.
    protocol = parse_setting("AUTOLABEL_TRITON_PROTOCOL", env.get("AUTOLABEL_TRITON_PROTOCOL", "grpc"))
    host, port = host_port(env["AUTOLABEL_TRITON_URL"])
    assert port == host_port(default_of("triton_url"))[1], "Triton port differs from the settings default"
    for name in ("triton", "triton-cpu"):
        svc = services[name]
        aliases = {name}
        for net in (svc.get("networks") or {}).values():
            aliases |= set((net or {}).get("aliases", []))
        assert host in aliases, f"{name} is not reachable as {host}"
        served = int(flag(svc["command"], f"{protocol}-port"))
        assert served == port, f"{name}: {protocol} port {served} != AUTOLABEL_TRITON_URL port {port}"


def test_metrics_port_agrees_everywhere(services: dict) -> None:
    port = default_of("metrics_port")
    env = env_dict(services["worker"])
    assert parse_setting("AUTOLABEL_METRICS_PORT", env["AUTOLABEL_METRICS_PORT"]) == port
    assert f"EXPOSE {port}" in DOCKERFILE.read_text()
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    sd = jobs["autolabel-worker"]["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == port


def test_prometheus_scrapes_triton_and_lag(services: dict) -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    triton_target = jobs["triton"]["static_configs"][0]["targets"][0]
    host, port = host_port(triton_target)
    assert host == "triton"
    for name in ("triton", "triton-cpu"):
        assert int(flag(services[name]["command"], "metrics-port")) == port
        assert flag(services[name]["command"], "allow-metrics") == "true"
    exporter = jobs["kafka-exporter"]["static_configs"][0]["targets"][0]
    assert host_port(exporter) == ("kafka-exporter", 9308)
    assert "--kafka.server=kafka:9092" in services["kafka-exporter"]["command"]
    mounted = [v.split(":")[0] for v in services["prometheus"]["volumes"]]
    assert "./deploy/compose/prometheus/prometheus.yml" in mounted


def test_triton_release_serves_the_built_target(services: dict) -> None:
    """The pinned Triton must have the backend the built repository needs."""
    image = services["triton"]["image"]
    assert image.startswith("nvcr.io/nvidia/tritonserver:") and image.endswith("-py3")
    yy, mm = (int(x) for x in image_tag(image).split("-")[0].split("."))
    target = flag_after(services["model-build"]["command"], "--target")
    assert target == ("gpu-tf" if (yy, mm) <= LAST_TF_TRITON else "gpu-onnx"), (
        f"Triton {yy}.{mm:02d} cannot serve --target {target}"
    )
    assert flag_after(services["model-build-cpu"]["command"], "--target") == "cpu"
    # Each Triton reads the volume its own build step writes.
    for build, triton in (("model-build", "triton"), ("model-build-cpu", "triton-cpu")):
        out = flag_after(services[build]["command"], "--out")
        built = {v.split(":")[0] for v in services[build]["volumes"] if v.split(":")[1] == out}
        repo = flag(services[triton]["command"], "model-repository")
        served = {v.split(":")[0] for v in services[triton]["volumes"] if v.split(":")[1] == repo}
        assert built and built == served, f"{triton} does not serve what {build} writes"
        assert services[triton]["depends_on"][build]["condition"] == "service_completed_successfully"
    # CPU Triton is the same official release plus TensorFlow.
    cpu_file = COMPOSE_DIR / services["triton-cpu"]["build"]["dockerfile"]
    assert f"FROM {image}" in cpu_file.read_text()
    # GPU reservation only on the GPU service; profiles keep them apart.
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["triton-cpu"]
    assert services["triton"]["profiles"] == ["gpu"] and services["triton-cpu"]["profiles"] == ["cpu"]


def flag_after(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_triton_healthcheck_uses_the_ready_endpoint(services: dict) -> None:
    for name in ("triton", "triton-cpu"):
        test = " ".join(services[name]["healthcheck"]["test"])
        http = int(flag(services[name]["command"], "http-port"))
        assert f"/dev/tcp/127.0.0.1/{http}" in test and "/v2/health/ready" in test
        assert published_ports(services[name])[http][1] == http
    worker = services["worker"]["depends_on"]
    assert worker["triton"]["condition"] == worker["triton-cpu"]["condition"] == "service_healthy"
    assert worker["triton"]["required"] is False and worker["triton-cpu"]["required"] is False


# --- Grafana ----------------------------------------------------------------------------


def test_grafana_dashboard_shows_the_required_panels() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no provisioned dashboard"
    dash = json.loads(files[0].read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    for metric in WORKER_METRICS + THIRD_PARTY_METRICS:
        assert metric in text, f"dashboard has no panel on {metric}"
    assert re.search(r"histogram_quantile\(0\.5\d*,[^\n]*autolabel_e2e_latency_seconds_bucket", text)
    assert re.search(r"histogram_quantile\(0\.99,[^\n]*autolabel_e2e_latency_seconds_bucket", text)
    assert re.search(r"by \(code\)[^\n]*autolabel_dead_letters_total", text)
    groups = set(re.findall(r'consumergroup="([^"]+)"', text))
    assert groups == {default_of("consumer_group")}, f"lag panel watches {groups}"
    # Every panel uses the provisioned datasource.
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"], p["title"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "autolabel.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_grafana_mounts_provisioning(services: dict) -> None:
    vols = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert vols["./deploy/compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert vols["./deploy/compose/grafana/dashboards"] == "/var/lib/grafana/dashboards"


def test_worker_metric_names_match_observability_module() -> None:
    """Dashboard metric names are the ones services/observability.py registers (read from
    the live Prometheus registry, not from the module's text)."""
    from prometheus_client import REGISTRY

    import services.drift  # the worker's drift metrics
    import services.observability as obs
    import services.review.quality  # noqa: F401 - the review app's live precision

    names = {f.name + ("_total" if f.type == "counter" else "") for f in REGISTRY.collect()}
    for metric in WORKER_METRICS:
        assert metric in names, f"services/observability.py (or drift, review.quality) registers no {metric}"
    # The dead-letter counter is labelled by `code`, which the DLQ panel groups by.
    assert obs.DEAD_LETTERS._labelnames == ("code",)


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def stage_lines(name: str) -> list[str]:
    """A stage's lines after those of the stages it is built FROM (what it inherits)."""
    stages = dockerfile_stages()
    parent = re.match(r"FROM\s+(\S+)", stages[name][0], re.I).group(1)
    return (stage_lines(parent) if parent in stages else []) + stages[name]


def test_dockerfile_default_target_is_the_runtime() -> None:
    """`docker build .` without --target builds the last stage: the worker's runtime."""
    assert list(dockerfile_stages())[-1] == "runtime"
    header = DOCKERFILE.read_text().split("\nFROM", 1)[0]
    assert re.search(r"docker build -t autolabel:\S+ \.\s", header), "the header shows the plain build"


def test_dockerfile_multistage_nonroot_healthcheck() -> None:
    stages = dockerfile_stages()
    assert {"builder", "runtime", "ml"} <= set(stages)
    runtime = stage_lines("runtime")
    assert any(line.startswith("COPY --from=builder") for line in runtime), "runtime copies from builder"
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") and "autolabel-healthcheck" in line for line in runtime)
    assert any("ENTRYPOINT" in line and "autolabel" in line for line in runtime)
    # The worker image has no TensorFlow: the `ml` extra only in the ml stages.
    for name in ("builder", "runtime"):
        assert not any("[ml]" in line or "tensorflow" in line.lower() for line in stage_lines(name)), name
    # The ml image runs as the same non-root user and has the ml venv.
    ml = stage_lines("ml")
    assert [line.split()[1] for line in ml if line.startswith("USER ")][-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("COPY --from=ml-builder /opt/venv") for line in ml)
    assert any("[ml]" in line for line in stages["ml-builder"])
    # The compose services build the stages they name.
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert services["worker"]["build"]["target"] == "runtime"
    assert services["model-build"]["build"]["target"] == "ml"


def test_dockerfile_base_images_pinned() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for ref in re.findall(r"^FROM\s+(\S+)", text, re.M):
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        if ref in dockerfile_stages():
            continue  # an earlier stage
        assert_pinned(ref, "Dockerfile")
    for line in (COMPOSE_DIR / "triton-cpu.Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            assert_pinned(line.split()[1], "triton-cpu.Dockerfile")


def dockerignored(path: str) -> bool:
    ignored = False
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        pat = pattern.removeprefix("**/")
        if any(fnmatch(p, pattern) or fnmatch(p.rsplit("/", 1)[-1], pat) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_exist_and_are_in_the_context() -> None:
    text = DOCKERFILE.read_text()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            if any(c in src for c in "*?["):
                continue
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
            assert not dockerignored(src), f"Dockerfile copies {src}, which .dockerignore excludes"
    for secret in (".env", ".venv", ".git", "model_repository"):
        assert dockerignored(secret), f".dockerignore lets {secret} into the image"


def test_healthcheck_reads_the_settings_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("autolabel_healthcheck", COMPOSE_DIR / "healthcheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(ROOT / "deploy")  # no .env here
    monkeypatch.setenv("AUTOLABEL_METRICS_PORT", "0")
    assert mod.main() == 0  # metrics off: nothing to probe
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    monkeypatch.setenv("AUTOLABEL_METRICS_PORT", str(free))
    assert mod.main() == 1  # nothing listens there: unhealthy


# --- .env.example -----------------------------------------------------------------------


def env_example() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*(AUTOLABEL_[A-Z0-9_]+)=(.*)$", line)
        if m:
            assert m.group(1) not in pairs, f".env.example lists {m.group(1)} twice"
            pairs[m.group(1)] = m.group(2).strip()
    return pairs


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    listed = env_example()
    fields = {f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields}
    assert not (set(listed) - fields), f"not settings: {sorted(set(listed) - fields)}"
    assert not (fields - set(listed)), f".env.example lacks {sorted(fields - set(listed))}"


def test_env_example_shows_the_defaults() -> None:
    for var, raw in env_example().items():
        if raw == "":
            continue  # None, empty list or computed
        assert parse_setting(var, raw) == default_of(field_of(var)), f".env.example: {var}={raw}"


# --- docs and the model contract --------------------------------------------------------


def test_served_model_names_agree_with_the_model_contract() -> None:
    """The worker's model (settings) and the standalone task models are in the contract."""
    contract = (ROOT / "docs" / "model-repository.md").read_text()
    table = {m for row in re.findall(r"^\|(.+?)\|", contract, re.M) for m in re.findall(r"`([a-z_]+)`", row)}
    assert default_of("triton_model") in table
    assert set(TASKS) <= table
    assert re.search(r"--target cpu\|gpu-tf\|gpu-onnx", contract)


def test_served_model_names_agree_with_the_repository_build() -> None:
    """The names `autolabel models build` writes (training.serving.repository, no TensorFlow needed)
    include the model the workers call, and match the contract's table."""
    from training.serving import repository as export

    built = export.managed_names()
    assert default_of("triton_model") in built
    contract = (ROOT / "docs" / "model-repository.md").read_text()
    rows = re.findall(r"^\|(.+?)\|", contract, re.M)
    table = {m for row in rows for m in re.findall(r"`([a-z_]+)`", row)}
    assert built <= table, f"built but not in the contract: {sorted(built - table)}"


def test_deploy_docs_cover_the_commands() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "docker compose --profile gpu",
        "docker compose --profile cpu",
        "--scale worker=",
        "kubectl apply -k deploy/k8s/overlays/dev",
        "kubectl apply -k deploy/k8s/overlays/prod-gpu",
        "autolabel models build --target",
        "docs/benchmarks.md",
        "rollout undo",
        "nvcr.io/nvidia/tritonserver:25.02-py3",
    ):
        assert needle in doc, f"docs/deploy.md does not mention {needle!r}"


# --- with a container engine --------------------------------------------------------------


def _engine_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if info.returncode != 0:
        return "no container engine (`docker info` fails)"
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    if version.returncode != 0:
        return "docker engine present but the compose plugin is not installed"
    return None


def test_docker_compose_config_passes() -> None:
    reason = _engine_reason()
    if reason:
        pytest.skip(reason)
    for profile in ("gpu", "cpu"):
        proc = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", profile, "--profile", "tools", "config", "--quiet"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only-password"},
        )
        assert proc.returncode == 0, proc.stderr


def test_built_configs_run_on_the_triton_that_serves_them(services: dict) -> None:
    """Render a config.pbtxt for each compose build target (training.serving.triton_config, no
    TensorFlow) and check the Triton serving that volume can run it."""
    from training.serving import triton_config as tc

    spec = tc.ModelSpec(
        name=default_of("triton_model") + "_probe",
        inputs=[tc.Tensor("image", "uint8", (224, 224, 3))],
        outputs=[tc.Tensor("probs", "float32", (3,))],
    )
    tag = image_tag(services["triton"]["image"])
    release = tuple(int(x) for x in tag.split("-")[0].split("."))
    cpu_dockerfile = (COMPOSE_DIR / services["triton-cpu"]["build"]["dockerfile"]).read_text()
    for build, triton in (("model-build", "triton"), ("model-build-cpu", "triton-cpu")):
        target = flag_after(services[build]["command"], "--target")
        assert target in tc.TARGETS, f"{build}: unknown target {target}"
        text = tc.config_pbtxt(spec, target, tc.default_tuning(target))
        gpu = "deploy" in services[triton]
        if "KIND_GPU" in text:
            assert gpu, f"{triton} has no GPU but --target {target} asks for KIND_GPU"
        if 'platform: "tensorflow_savedmodel"' in text:
            assert release <= LAST_TF_TRITON, f"{triton} {tag} has no TensorFlow backend"
        if 'backend: "python"' in text:
            assert "tensorflow" in cpu_dockerfile and triton == "triton-cpu", (
                f"{triton}: the Python backend models need TensorFlow in the Triton image"
            )
