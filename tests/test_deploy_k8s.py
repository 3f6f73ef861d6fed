"""deploy/k8s (kustomize base + overlays), checked without a cluster or container engine.

Most checks read the YAML directly (base, plus the overlays' env merges and patches).
Where kubectl is installed, every overlay is also built with `kubectl kustomize` and the
rendered objects are checked again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from settings_helpers import default_of, field_of

from services.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
COMPONENTS = sorted(p for p in (K8S / "components").glob("*") if (p / "kustomization.yaml").exists())
PRIVATE_CA = K8S / "components" / "kafka-private-ca"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# Jobs' pod templates are immutable: every documented apply deletes the last run first.
DELETE_TOPIC_INIT = "kubectl -n autolabel delete job autolabel-topic-init --ignore-not-found"
LAST_TF_TRITON = (25, 2)
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


# --- helpers ---------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def settings_from(env: dict[str, str]) -> Settings:
    """Validate a set of AUTOLABEL_* variables as the worker would read them."""
    for var in env:
        assert var.startswith(ENV_PREFIX) and field_of(var) in Settings.model_fields, f"{var} is not a setting"
    return Settings(_env_file=None, **{field_of(k): v for k, v in env.items()})


def base_objects() -> dict[tuple[str, str], dict]:
    objs = {}
    for res in kustomization(BASE)["resources"]:
        for doc in load_docs(BASE / res):
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def config_env(directory: Path, name: str) -> dict[str, str]:
    """The data of ConfigMap `name` as built for `directory` (base, then overlay merges)."""
    env: dict[str, str] = {}
    chain = [BASE] if directory == BASE else [BASE, directory]
    chain += [(directory / c).resolve() for c in kustomization(directory).get("components", [])]
    for d in chain:
        for gen in kustomization(d).get("configMapGenerator", []):
            if gen["name"] == name:
                for f in gen.get("envs", []):
                    env.update(read_env_file(d / f))
                for lit in gen.get("literals", []):
                    k, _, v = lit.partition("=")
                    env[k] = v
    return env


def overlay_patch(directory: Path, kind: str, name: str) -> dict:
    """Strategic-merge patch documents of an overlay for one object (shallow view)."""
    merged: dict = {}
    for p in kustomization(directory).get("patches", []):
        if "path" not in p:
            continue
        for doc in load_docs(directory / p["path"]):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                merged.setdefault("spec", {}).update(doc.get("spec", {}))
    return merged


def json6902(directory: Path, kind: str, name: str) -> list[dict]:
    ops = []
    for p in kustomization(directory).get("patches", []):
        target = p.get("target", {})
        if target.get("kind") == kind and target.get("name") == name and "patch" in p:
            ops += yaml.safe_load(p["patch"])
    return ops


def scaled_object_spec(directory: Path, name: str) -> dict:
    spec = dict(base_objects()[("ScaledObject", name)]["spec"])
    if directory != BASE:
        spec.update(overlay_patch(directory, "ScaledObject", name).get("spec", {}))
        for op in json6902(directory, "ScaledObject", name):
            assert op["op"] == "replace" and op["path"].count("/") == 2, op
            spec[op["path"].split("/")[-1]] = op["value"]
    return spec


def image_tag(image: str) -> str | None:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def pinned_image(image: str, images: list[dict]) -> str:
    """The image reference after kustomize's `images` transformer."""
    repo = image.split("@", 1)[0].rsplit(":", 1)[0] if image_tag(image) else image
    for entry in images:
        if entry["name"] == repo:
            name = entry.get("newName", repo)
            if "digest" in entry:
                return f"{name}@{entry['digest']}"
            return f"{name}:{entry.get('newTag', image_tag(image))}"
    return image


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert "@sha256:" in image or tag, f"{where}: image {image!r} has no tag"
    if tag is not None:
        assert tag != "latest" and re.search(r"\d", tag), f"{where}: image {image!r} is not pinned"


def s3_bucket_of(url: str) -> str:
    """Bucket of a Triton S3 repository path: s3://bucket/path or s3://http://host:port/bucket/path."""
    assert url.startswith("s3://"), url
    rest = url[len("s3://"):]
    m = re.match(r"https?://[^/]+/(.+)$", rest)
    if m:
        rest = m.group(1)
    return rest.split("/", 1)[0]


# --- parse / layout ---------------------------------------------------------------------


def test_every_manifest_parses_and_is_a_k8s_object() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert "apiVersion" in doc and "kind" in doc, path
            if doc["kind"] not in ("Kustomization", "Component"):
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


def test_kustomizations_reference_existing_files() -> None:
    for directory in [BASE, *OVERLAYS, *COMPONENTS]:
        k = kustomization(directory)
        refs = list(k.get("resources", [])) + list(k.get("components", []))
        refs += [p["path"] for p in k.get("patches", []) if "path" in p]
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            refs += gen.get("envs", []) + gen.get("files", [])
        for ref in refs:
            assert (directory / ref).exists(), f"{directory}: {ref} does not exist"
    assert {p.name for p in OVERLAYS} >= {"dev", "prod-gpu"}


def test_overlays_keep_the_base_namespace() -> None:
    """Objects an overlay adds (generated secrets, ServiceMonitors) land in the same namespace."""
    namespace = kustomization(BASE)["namespace"]
    assert base_objects()[("Namespace", namespace)]
    for directory in OVERLAYS:
        assert kustomization(directory).get("namespace") == namespace, directory.name


def test_base_has_the_required_objects() -> None:
    objs = base_objects()
    for key in [
        ("Namespace", "autolabel"),
        ("Deployment", "autolabel-worker"),
        ("ScaledObject", "autolabel-worker"),
        ("TriggerAuthentication", "autolabel-kafka"),
        ("PodDisruptionBudget", "autolabel-worker"),
        ("Deployment", "triton"),
        ("Service", "triton"),
        ("ScaledObject", "triton"),
        ("PodDisruptionBudget", "triton"),
        ("Job", "autolabel-topic-init"),
    ]:
        assert key in objs, f"base lacks {key}"
    assert not any(kind == "Secret" for kind, _ in objs), "base must not ship secrets"


# --- settings --------------------------------------------------------------------------


def test_every_autolabel_variable_is_a_setting() -> None:
    for path in sorted(K8S.rglob("*")):
        if path.is_file():
            for var in set(re.findall(r"\b(AUTOLABEL_[A-Z0-9_]+)\b", path.read_text())):
                assert field_of(var) in Settings.model_fields, f"{path.relative_to(ROOT)}: {var} is not a setting"


def test_config_maps_validate_as_settings() -> None:
    for directory in [BASE, *OVERLAYS]:
        env = config_env(directory, "autolabel-config")
        settings_from(env)  # raises on a bad value or a non-setting
        # Settings whose value is a contract with the rest of the system stay default.
        for var in ("AUTOLABEL_CONSUMER_GROUP", "AUTOLABEL_TOPIC_IMAGES", "AUTOLABEL_METRICS_PORT", "AUTOLABEL_S3_BUCKET"):
            if var in env:
                assert settings_from({var: env[var]}).model_dump()[field_of(var)] == default_of(field_of(var)), (
                    f"{directory.name}: {var}={env[var]} differs from the settings default"
                )


def test_project_containers_set_only_settings() -> None:
    for obj in base_objects().values():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for c in containers(obj):
            if c["image"] != "autolabel":
                continue
            for e in c.get("env", []):
                assert e["name"].startswith(ENV_PREFIX) and field_of(e["name"]) in Settings.model_fields, (
                    f"{obj['metadata']['name']}: {e['name']} is not a setting"
                )
            refs = [s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s]
            assert refs == ["autolabel-config"], obj["metadata"]["name"]


def test_secret_references_resolve() -> None:
    template = {d["metadata"]["name"]: d for d in load_docs(BASE / "secrets.template.yaml")}
    for d in template.values():
        assert d["kind"] == "Secret" and d["metadata"]["namespace"] == kustomization(BASE)["namespace"]
        for key in d["stringData"]:
            if key.startswith(ENV_PREFIX):
                assert field_of(key) in Settings.model_fields, key
    refs: list[tuple[str, str, bool]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                r = node["secretKeyRef"]
                refs.append((r["name"], r["key"], bool(r.get("optional"))))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    objs = base_objects()
    for obj in objs.values():
        walk(obj)
    auth = objs[("TriggerAuthentication", "autolabel-kafka")]
    refs += [(r["name"], r["key"], False) for r in auth["spec"]["secretTargetRef"]]
    assert refs
    for name, key, _ in refs:
        assert name in template and key in template[name]["stringData"], f"template lacks {name}/{key}"
    # dev generates its secrets: they must have every key, including the optional ones.
    generators = kustomization(K8S / "overlays" / "dev").get("secretGenerator", [])
    dev = {g["name"]: {lit.partition("=")[0] for lit in g.get("literals", [])} for g in generators}
    for name, key, _ in refs:
        assert key in dev.get(name, set()), f"dev overlay's secret {name} lacks {key}"
    # Generated secrets keep their names: TriggerAuthentication refers to them by name.
    for g in kustomization(K8S / "overlays" / "dev").get("secretGenerator", []):
        assert g.get("options", {}).get("disableNameSuffixHash") is True, g["name"]


# --- workers: KEDA on consumer lag ---------------------------------------------------------


def test_worker_scaledobject_reads_the_settings_from_the_worker() -> None:
    so = base_objects()[("ScaledObject", "autolabel-worker")]
    assert so["spec"]["scaleTargetRef"]["name"] == "autolabel-worker"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    base_env = config_env(BASE, "autolabel-config")
    wanted = {
        "bootstrapServersFromEnv": "kafka_bootstrap_servers",
        "consumerGroupFromEnv": "consumer_group",
        "topicFromEnv": "topic_images",
    }
    for key, field in wanted.items():
        var = meta[key]
        assert field_of(var) == field
        # KEDA reads the container's env: the ConfigMap must set it (defaults don't reach KEDA).
        assert var in base_env, f"{var} must be set explicitly for KEDA"
    assert trigger["authenticationRef"]["name"] == "autolabel-kafka"
    assert meta.get("allowIdleConsumers", "false") == "false"
    envsrc = so["spec"]["scaleTargetRef"].get("envSourceContainerName")
    worker = base_objects()[("Deployment", "autolabel-worker")]
    assert envsrc in {c["name"] for c in containers(worker)}


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_worker_max_replicas_equal_partitions(directory: Path) -> None:
    partitions = settings_from(config_env(directory, "autolabel-config")).topic_partitions
    spec = scaled_object_spec(directory, "autolabel-worker")
    assert spec["maxReplicaCount"] == partitions, (
        f"{directory.name}: worker maxReplicaCount {spec['maxReplicaCount']} != partitions {partitions}"
    )
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_worker_probes_and_metrics_port() -> None:
    port = default_of("metrics_port")
    assert settings_from({"AUTOLABEL_METRICS_PORT": config_env(BASE, "autolabel-config")["AUTOLABEL_METRICS_PORT"]}).metrics_port == port
    worker = base_objects()[("Deployment", "autolabel-worker")]
    (c,) = worker["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics" and c[probe]["httpGet"]["path"] == "/metrics"
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    svc = base_objects()[("Service", "autolabel-worker-metrics")]
    assert svc["spec"]["ports"][0]["port"] == port
    sec = worker["spec"]["template"]["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0


# --- Triton ------------------------------------------------------------------------------


def triton_container() -> dict:
    (c,) = base_objects()[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"]
    return c


def arg(args: list[str], name: str) -> str:
    (v,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return v


def test_triton_ports_agree_with_worker_settings_and_service() -> None:
    c = triton_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == TRITON_PORTS
    for name, port in TRITON_PORTS.items():
        assert int(arg(c["args"], f"{name}-port")) == port
    svc = base_objects()[("Service", "triton")]
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert svc_ports == TRITON_PORTS
    for directory in [BASE, *OVERLAYS]:
        s = settings_from(config_env(directory, "autolabel-config"))
        host, _, port = s.triton_url.rpartition(":")
        assert host == svc["metadata"]["name"], f"{directory.name}: AUTOLABEL_TRITON_URL host {host}"
        assert int(port) == svc_ports[s.triton_protocol.value], f"{directory.name}: Triton {s.triton_protocol.value} port"
        assert int(port) == int(default_of("triton_url").rpartition(":")[2])


def test_triton_health_probes() -> None:
    c = triton_container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"


def test_triton_gpu_and_s3_repository() -> None:
    c = triton_container()
    for part in ("requests", "limits"):
        assert c["resources"][part]["nvidia.com/gpu"] == 1
    assert arg(c["args"], "model-repository") == "$(TRITON_MODEL_REPOSITORY)"
    env = {e["name"]: e for e in c["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "TRITON_MODEL_REPOSITORY"} <= set(env)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "AUTOLABEL_S3_ACCESS_KEY_ID"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AUTOLABEL_S3_SECRET_ACCESS_KEY"
    assert env["AWS_DEFAULT_REGION"]["valueFrom"]["configMapKeyRef"]["key"] == "AUTOLABEL_S3_REGION"
    for directory in [BASE, *OVERLAYS]:
        settings = settings_from(config_env(directory, "autolabel-config"))
        assert "AUTOLABEL_S3_REGION" in config_env(directory, "autolabel-config")
        repo = config_env(directory, "triton-config")["TRITON_MODEL_REPOSITORY"]
        assert s3_bucket_of(repo) == settings.s3_bucket, f"{directory.name}: repository not in the bucket"


def test_triton_image_matches_compose_and_serves_gpu_tf() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    image = triton_container()["image"]
    assert image == compose["triton"]["image"], "k8s and compose pin different Triton releases"
    yy, mm = (int(x) for x in image_tag(image).split("-")[0].split("."))
    assert (yy, mm) <= LAST_TF_TRITON, "a Triton after 25.02 has no TensorFlow backend: build gpu-onnx and say so"


def test_triton_scales_on_queue_time() -> None:
    so = base_objects()[("ScaledObject", "triton")]
    assert so["spec"]["scaleTargetRef"]["name"] == "triton"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    query = trigger["metadata"]["query"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    namespaces = set(re.findall(r'namespace="([^"]+)"', query))
    assert namespaces == {kustomization(BASE)["namespace"]}
    float(trigger["metadata"]["threshold"])


# --- disruption budgets, resources, images ---------------------------------------------


def test_pdbs_select_their_deployments() -> None:
    objs = base_objects()
    for name in ("autolabel-worker", "triton"):
        pdb = objs[("PodDisruptionBudget", name)]
        labels = objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert sel.items() <= labels.items(), f"PDB {name} selects no pod of its Deployment"
        assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


def test_every_container_has_requests_and_limits() -> None:
    for obj in base_objects().values():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for c in containers(obj):
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{obj['metadata']['name']}/{c['name']}"
            assert "memory" in res.get("limits", {}), f"{obj['metadata']['name']}/{c['name']}"


def test_images_are_pinned() -> None:
    base_images = kustomization(BASE).get("images", [])
    for obj in base_objects().values():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for c in containers(obj):
            assert_pinned(pinned_image(c["image"], base_images), f"base {obj['metadata']['name']}")
            for directory in OVERLAYS:
                images = base_images + kustomization(directory).get("images", [])
                # The overlay's entry wins over the base's for the same name.
                ref = pinned_image(c["image"], list(reversed(images)))
                assert_pinned(ref, f"{directory.name} {obj['metadata']['name']}")
    for directory in [BASE, *OVERLAYS]:
        for entry in kustomization(directory).get("images", []):
            assert entry.get("newTag", "x") != "latest"


def test_prod_overlay_is_secure_and_gpu() -> None:
    env = config_env(K8S / "overlays" / "prod-gpu", "autolabel-config")
    s = settings_from(env)
    assert s.kafka_security_protocol.value == "SASL_SSL"
    prod = kustomization(K8S / "overlays" / "prod-gpu")
    assert "secretGenerator" not in prod, "prod secrets come from the cluster's secret store"


# --- Kafka CA: optional ----------------------------------------------------------------------


def provided_ca(directory: Path) -> str:
    """The ca.crt the workers get in `directory`: generated (dev) or the template's (prod)."""
    for gen in kustomization(directory).get("secretGenerator", []):
        if gen["name"] == "autolabel-kafka":
            return dict(lit.partition("=")[::2] for lit in gen.get("literals", []))["ca.crt"]
    (template,) = [d for d in load_docs(BASE / "secrets.template.yaml") if d["metadata"]["name"] == "autolabel-kafka"]
    return template["stringData"]["ca.crt"]


def test_an_empty_ca_file_stops_a_tls_client(tmp_path: Path) -> None:
    """Why the next test matters: the worker builds its TLS context from
    AUTOLABEL_KAFKA_SSL_CAFILE, and an empty file there is an error, not "system CAs"."""
    import ssl

    empty = tmp_path / "ca.crt"
    empty.write_text("")
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context(cafile=str(empty))


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_kafka_ca_file_is_set_only_where_a_ca_is_provided(directory: Path) -> None:
    """The template (prod) and dev's generated Secret leave ca.crt empty (public CA / no TLS):
    then AUTOLABEL_KAFKA_SSL_CAFILE must stay unset so the workers use the system CAs.
    Brokers with a private CA opt in with the kafka-private-ca component."""
    env = config_env(directory, "autolabel-config")
    if provided_ca(directory).strip() == "":
        assert "AUTOLABEL_KAFKA_SSL_CAFILE" not in env, (
            f"{directory.name}: AUTOLABEL_KAFKA_SSL_CAFILE names a ca.crt that is empty by default"
        )
    assert "components/kafka-private-ca" not in " ".join(kustomization(directory).get("components", []))


def test_private_ca_component_names_the_mounted_ca() -> None:
    k = kustomization(PRIVATE_CA)
    assert k["kind"] == "Component"
    (gen,) = k["configMapGenerator"]
    assert gen["name"] == "autolabel-config" and gen["behavior"] == "merge"
    env = dict(lit.partition("=")[::2] for lit in gen["literals"])
    assert set(env) == {"AUTOLABEL_KAFKA_SSL_CAFILE"}
    cafile = settings_from(env).kafka_ssl_cafile
    assert cafile is not None and cafile.name == "ca.crt"
    # Every project container that talks to Kafka mounts ca.crt of Secret autolabel-kafka there.
    for name in ("autolabel-worker", "autolabel-topic-init"):
        obj = [o for (kind, n), o in base_objects().items() if n == name and kind in ("Deployment", "Job")][0]
        spec = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in containers(obj)[0]["volumeMounts"] if m["mountPath"] == str(cafile.parent)]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "autolabel-kafka"
        assert {"key": "ca.crt", "path": cafile.name} in secret["items"]
    # The prod overlay shows how to turn it on.
    text = (K8S / "overlays" / "prod-gpu" / "kustomization.yaml").read_text()
    assert re.search(r"^#\s+- \.\./\.\./components/kafka-private-ca$", text, re.M)


# --- KEDA owns the replica counts ------------------------------------------------------------


def scaled_targets() -> set[str]:
    return {o["spec"]["scaleTargetRef"]["name"] for (kind, _), o in base_objects().items() if kind == "ScaledObject"}


def test_deployments_scaled_by_keda_set_no_replicas() -> None:
    """`replicas` next to a ScaledObject resets the HPA's count on every `kubectl apply`."""
    targets = scaled_targets()
    assert targets == {"autolabel-worker", "triton"}
    for name in targets:
        assert "replicas" not in base_objects()[("Deployment", name)]["spec"], f"base Deployment {name} sets replicas"
        for directory in OVERLAYS:
            assert "replicas" not in overlay_patch(directory, "Deployment", name).get("spec", {}), directory.name
            for op in json6902(directory, "Deployment", name):
                assert "/replicas" not in op["path"], f"{directory.name} patches {name} replicas"


# --- topic-init Job: immutable pod template ----------------------------------------------------


def apply_commands(text: str) -> list[tuple[str, str]]:
    """(command before, apply command) for every `kubectl apply -k` of an overlay in `text`."""
    lines = [re.sub(r"^\s*#?\s*", "", line) for line in text.splitlines()]
    lines = [line for line in lines if line.startswith("kubectl ")]
    return [(lines[i - 1] if i else "", line) for i, line in enumerate(lines) if line.startswith("kubectl apply -k deploy/k8s/overlays/")]


def test_every_apply_deletes_the_last_topic_init_job_first() -> None:
    """The Job's pod template (image, hashed ConfigMap name) cannot change in place, so an
    apply while the last run still exists (ttlSecondsAfterFinished) fails for it."""
    job = base_objects()[("Job", "autolabel-topic-init")]
    assert job["metadata"]["name"] in DELETE_TOPIC_INIT and kustomization(BASE)["namespace"] in DELETE_TOPIC_INIT
    sources = [DEPLOY_DOC] + [d / "kustomization.yaml" for d in [BASE, *OVERLAYS]]
    found = 0
    for path in sources:
        for before, apply in apply_commands(path.read_text()):
            found += 1
            assert before == DELETE_TOPIC_INIT, f"{path.relative_to(ROOT)}: `{apply}` without `{DELETE_TOPIC_INIT}` before it"
    assert found >= 4
    assert "delete job autolabel-topic-init" in (BASE / "topic-init-job.yaml").read_text()


# --- with kubectl -----------------------------------------------------------------------------


def kubectl_build(directory: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: kustomize build not run")
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_kustomize_build(directory: Path) -> None:
    docs = kubectl_build(directory)
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    namespace = kustomization(BASE)["namespace"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == namespace, d["metadata"]["name"]
    configmaps = {c["metadata"]["name"]: c for c in by_kind["ConfigMap"]}
    (autolabel_cm,) = [c for n, c in configmaps.items() if n.startswith("autolabel-config-")]
    settings = settings_from(autolabel_cm["data"])
    for d in by_kind["Deployment"] + by_kind["Job"]:
        for c in containers(d):
            assert_pinned(c["image"], f"{directory.name} {d['metadata']['name']}")
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps
    (worker_so,) = [s for s in by_kind["ScaledObject"] if s["metadata"]["name"] == "autolabel-worker"]
    assert worker_so["spec"]["maxReplicaCount"] == settings.topic_partitions
    (triton_so,) = [s for s in by_kind["ScaledObject"] if s["metadata"]["name"] == "triton"]
    assert set(re.findall(r'namespace="([^"]+)"', triton_so["spec"]["triggers"][0]["metadata"]["query"])) == {namespace}
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    if directory.name == "dev":
        assert {"autolabel-s3", "autolabel-kafka"} <= set(secrets)
        triton = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "triton"][0]
        res = containers(triton)[0]["resources"]
        assert "nvidia.com/gpu" not in res.get("requests", {}) and "nvidia.com/gpu" not in res.get("limits", {})
    for d in by_kind["Deployment"]:
        if d["metadata"]["name"] in scaled_targets():
            assert "replicas" not in d["spec"], f"{directory.name}: {d['metadata']['name']} sets replicas under KEDA"
    if "AUTOLABEL_KAFKA_SSL_CAFILE" in autolabel_cm["data"]:
        assert provided_ca(directory).strip(), f"{directory.name}: CA file set, no CA provided"
    if directory.name == "prod-gpu":
        assert not secrets
        assert "ServiceMonitor" in by_kind
        triton = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "triton"][0]
        assert containers(triton)[0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        (pdb,) = [p for p in by_kind["PodDisruptionBudget"] if p["metadata"]["name"] == "triton"]
        assert pdb["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}
        assert triton_so["spec"]["minReplicaCount"] >= 2


def test_kustomize_build_with_private_ca(tmp_path: Path) -> None:
    """prod-gpu plus the kafka-private-ca component: the worker's ConfigMap names the CA."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731 - kustomize wants relative paths
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [rel(K8S / "overlays" / "prod-gpu")],
        "components": [rel(PRIVATE_CA)],
    }))
    docs = kubectl_build(tmp_path)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("autolabel-config-")]
    settings = settings_from(cm["data"])
    assert str(settings.kafka_ssl_cafile) == "/etc/autolabel/kafka/ca.crt"
    assert settings.kafka_security_protocol.value == "SASL_SSL"
    # The worker refers to the hashed ConfigMap that carries it.
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "autolabel-worker"]
    assert containers(worker)[0]["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
