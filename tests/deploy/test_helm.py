"""The Helm chart: lint, render, Kubernetes schemas, settings and monitoring files.

Helm runs in process through helm-python-sdk (Helm's Go SDK as a shared library inside
the wheel; no helm binary, nothing downloaded). Rendered manifests are checked against
the Kubernetes OpenAPI schemas bundled in kubernetes-validate. Both are in the `dev`
extra; a missing one fails the import below rather than skipping these tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

from inferbatch.config import Settings
from inferbatch.engines.registry import parse_specs

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "inferbatch"
PRODUCTION = CHART / "ci" / "production-values.yaml"
RELEASE = "ib"
NAMESPACE = "batch"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]
MONITORING = "monitoring.coreos.com/v1"
KEDA = "keda.sh/v1alpha1"
CUSTOM_API_VERSIONS = {MONITORING, KEDA}
PREFIX = "INFERBATCH_"


def _production() -> dict[str, Any]:
    return helm.values_from_yaml(PRODUCTION.read_text())


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_ENGINES = {
    "engineUrl": "",
    "engines": {"*": {"url": "http://vllm:8000/v1", "max_in_flight": 16}},
    "workers": {
        "spot": {"engines": {"m": {"url": "http://127.0.0.1:8001/v1", "max_in_flight": 8}}}
    },
}

# S3-compatible object storage with keys from a Secret (MinIO here); production uses S3
# with workload identity instead
_MINIO = {
    "objectStorage": {
        "url": "s3://inferbatch/files",
        "endpoint": "http://minio.minio.svc:9000",
        "region": "us-east-1",
        "existingSecret": "minio-keys",
    }
}

# Two spot locations: a zone with its own replicas, and a whole region.
_LOCATIONS = {
    "locations": [
        {
            "name": "us-east-1a",
            "spotPriceRatio": 0.25,
            "bootSeconds": 180,
            "spot": {"replicas": 3, "autoscaling": {"maxReplicas": 7}},
        },
        {"name": "eu-west-1", "topologyKey": "topology.kubernetes.io/region"},
    ]
}

# name -> (values, API versions the cluster serves beyond the built-in ones)
SCENARIOS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "default": ({}, []),
    "object-storage-secret": (_MINIO, []),
    "default-prometheus-operator": ({}, [MONITORING]),
    "production": (_production(), [MONITORING, KEDA]),
    "production-hpa": (_merge(_production(), {"autoscaling": {"mode": "hpa"}}), [MONITORING]),
    "engines-per-pool": (_merge(_ENGINES, {"enginesInSecret": True}), []),
    "engines-configmap": (_ENGINES, []),
    "two-locations": (_LOCATIONS, []),
    "two-locations-production": (_merge(_production(), _LOCATIONS), [MONITORING, KEDA]),
}


def render(values: dict[str, Any], api_versions: list[str] | None = None) -> list[dict[str, Any]]:
    """``helm template`` in process: every rendered object, in template order.

    helm-python-sdk's ``Chart.render`` does not take API versions (``helm template
    --api-versions``), which the native render options accept, so this calls it directly.
    """
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": api_versions or []}
    with helm.Chart.load(CHART) as chart:
        raw = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    manifests: dict[str, str] = json.loads(raw)
    docs: list[dict[str, Any]] = []
    for name in sorted(manifests):
        if not name.endswith((".yaml", ".yml")):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(manifests[name]) if doc)
    return docs


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in _pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name}/{container['name']}", container


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    values, api_versions = SCENARIOS[request.param]
    return render(values, api_versions)


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_chart_lints_strict(values_name: str) -> None:
    values = _production() if values_name == "production" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not report["errors"], report
    assert not problems, problems


def test_every_manifest_validates_against_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    assert rendered
    for doc in rendered:
        if doc["apiVersion"] in CUSTOM_API_VERSIONS:
            # CRDs of other projects: no schema in kubernetes-validate; checked below.
            assert doc["metadata"]["name"] and doc["spec"]
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_inferbatch_env_var_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    names = {
        env["name"]
        for _, container in _containers(rendered)
        for env in container.get("env", [])
        if env["name"].startswith(PREFIX)
    }
    assert "INFERBATCH_DATABASE_URL" in names
    unknown = sorted(n for n in names if n.removeprefix(PREFIX).lower() not in fields)
    assert not unknown, f"not fields of inferbatch.config.Settings: {unknown}"


def test_no_container_sets_an_env_var_twice(rendered: list[dict[str, Any]]) -> None:
    for name, container in _containers(rendered):
        env = [e["name"] for e in container.get("env", [])]
        assert len(env) == len(set(env)), f"{name}: {sorted(env)}"


def test_pods_run_non_root_read_only_without_capabilities(
    rendered: list[dict[str, Any]],
) -> None:
    for name, spec in _pod_specs(rendered):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0], name
    for name, container in _containers(rendered):
        if not container["image"].startswith("ghcr.io/inferbatch/"):
            continue  # a user's extra container
        sec = container["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True, name
        assert sec["allowPrivilegeEscalation"] is False, name
        assert sec["capabilities"]["drop"] == ["ALL"], name
        assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"], name
        assert container["resources"]["requests"], name


def _env(docs: list[dict[str, Any]], deployment: str) -> dict[str, dict[str, Any]]:
    spec = _named(docs, "Deployment", f"{RELEASE}-inferbatch-{deployment}")["spec"]
    return {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}


FILE_ROLES = {f"{RELEASE}-inferbatch-api", f"{RELEASE}-inferbatch-scheduler"}


def test_file_storage_is_object_storage_or_a_volume_shared_by_api_and_scheduler(
    rendered: list[dict[str, Any]],
) -> None:
    claim = f"{RELEASE}-inferbatch-blobs"
    users = {
        name
        for name, spec in _pod_specs(rendered)
        for volume in spec["volumes"]
        if volume.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    envs = {name: {e["name"] for e in c.get("env", [])} for name, c in _containers(rendered)}
    with_url = {name.split("/")[0] for name, env in envs.items() if PREFIX + "BLOB_URL" in env}
    with_dir = {name.split("/")[0] for name, env in envs.items() if PREFIX + "BLOB_DIR" in env}
    if with_url:
        assert with_url == FILE_ROLES and not with_dir
        assert not users and not _kind(rendered, "PersistentVolumeClaim")
    else:
        assert with_dir == FILE_ROLES
        assert users == FILE_ROLES
        (pvc,) = _kind(rendered, "PersistentVolumeClaim")
        assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    # workers and migrations never touch file contents, nor get storage credentials
    for name, env in envs.items():
        if name.split("/")[0] not in FILE_ROLES:
            assert not {n for n in env if n.startswith("AWS_") or "BLOB" in n}, name


def test_object_storage_with_keys_from_an_existing_secret() -> None:
    docs = render(_MINIO)
    for role in ("api", "scheduler"):
        env = _env(docs, role)
        assert env[PREFIX + "BLOB_URL"]["value"] == "s3://inferbatch/files"
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
        assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "minio-keys", "key": var}
        token = env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token["optional"] is True
        Settings(blob_url=env[PREFIX + "BLOB_URL"]["value"])  # a URL the settings accept


def test_object_storage_with_the_clouds_workload_identity() -> None:
    docs = render(_production())
    (account,) = _kind(docs, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    for role in ("api", "scheduler"):
        env = _env(docs, role)
        assert env[PREFIX + "BLOB_URL"]["value"].startswith("s3://")
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_ENDPOINT_URL" not in env
        pod = _named(docs, "Deployment", f"{RELEASE}-inferbatch-{role}")["spec"]["template"]
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("url", ["bucket/prefix", "s3:/bucket", "https://s3.amazonaws.com/b"])
def test_a_malformed_object_storage_url_is_refused(url: str) -> None:
    with pytest.raises(helm.HelmError, match=r"objectStorage\.url must be"):
        render({"objectStorage": {"url": url}})


def test_api_probes_and_scheduler_and_worker_metrics_ports(
    rendered: list[dict[str, Any]],
) -> None:
    api = _named(rendered, "Deployment", f"{RELEASE}-inferbatch-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    scheduler = _named(rendered, "Deployment", f"{RELEASE}-inferbatch-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    for deployment in _kind(rendered, "Deployment"):
        if deployment["metadata"]["name"].endswith("-api"):
            continue
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["INFERBATCH_METRICS_PORT"] == str(ports["metrics"])


def test_worker_grace_period_covers_pre_stop_and_drain(rendered: list[dict[str, Any]]) -> None:
    workers = [d for d in _kind(rendered, "Deployment") if "-worker-" in d["metadata"]["name"]]
    assert {w["metadata"]["labels"]["inferbatch.io/pool"] for w in workers} == {
        "spot",
        "dedicated",
    }
    for worker in workers:
        spec = worker["spec"]["template"]["spec"]
        main = spec["containers"][0]
        assert main["args"][:2] == ["worker", "--pool"]
        env = {e["name"]: e.get("value") for e in main["env"]}
        drain = float(env[PREFIX + "DRAIN_SECONDS"])
        pre_stop = int(main["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] > pre_stop + drain


def test_spot_and_dedicated_pools_target_their_node_pools() -> None:
    docs = render({})
    spot = _named(docs, "Deployment", f"{RELEASE}-inferbatch-worker-spot")["spec"]["template"]
    dedicated = _named(docs, "Deployment", f"{RELEASE}-inferbatch-worker-dedicated")
    dedicated_spec = dedicated["spec"]["template"]["spec"]
    taints = {t["key"] for t in spot["spec"]["tolerations"]}
    assert taints == {"cloud.google.com/gke-spot", "kubernetes.azure.com/scalesetpriority"}
    preferred = spot["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    keys = {e["key"] for p in preferred for e in p["preference"]["matchExpressions"]}
    assert "eks.amazonaws.com/capacityType" in keys
    (term,) = dedicated_spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert {e["operator"] for e in term["matchExpressions"]} == {"NotIn"}
    assert "tolerations" not in dedicated_spec
    budgets = {p["metadata"]["name"] for p in _kind(docs, "PodDisruptionBudget")}
    assert budgets == {
        f"{RELEASE}-inferbatch-api",
        f"{RELEASE}-inferbatch-scheduler",
        f"{RELEASE}-inferbatch-worker-dedicated",
    }


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook() -> None:
    docs = render({})
    (job,) = _kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    (secret,) = _kind(docs, "Secret")
    hook_weight = int(secret["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert hook_weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_existing_secret_replaces_the_chart_secret() -> None:
    docs = render(_production())
    assert not _kind(docs, "Secret")
    for _, container in _containers(docs):
        (url,) = [e for e in container["env"] if e["name"] == PREFIX + "DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "inferbatch-db", "key": "uri"}


@pytest.mark.parametrize("in_secret", [False, True])
def test_engines_file_is_read_by_the_registry(tmp_path: Path, in_secret: bool) -> None:
    docs = render(_merge(_ENGINES, {"enginesInSecret": in_secret}))
    (holder,) = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-inferbatch-engines"]
    assert holder["kind"] == ("Secret" if in_secret else "ConfigMap")
    files = holder["stringData" if in_secret else "data"]
    mounted: dict[str, Path] = {}
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content)
        mounted[f"/etc/inferbatch/{name}"] = path
    for name, container in _containers(docs):
        env = {e["name"]: e.get("value") for e in container["env"]}
        if name.endswith("/migrate") or name.endswith("/scheduler"):
            assert PREFIX + "ENGINES" not in env
            continue
        assert PREFIX + "ENGINE_URL" not in env
        specs = parse_specs(mounted[env[PREFIX + "ENGINES"]], 32)
        expected = {"m"} if "worker-spot" in name else {"*"}
        assert set(specs) == expected, name


def test_engine_url_and_engines_together_are_refused() -> None:
    with pytest.raises(helm.HelmError, match="not both"):
        render({"engines": {"*": {"url": "http://x/v1"}}})


@pytest.mark.parametrize("mode", ["none", "keda", "hpa"])
def test_worker_autoscaling_modes(mode: str) -> None:
    docs = render({"autoscaling": {"mode": mode}})
    workers = [d for d in _kind(docs, "Deployment") if "-worker-" in d["metadata"]["name"]]
    scaled = {d["metadata"]["name"]: d for d in _kind(docs, "ScaledObject")}
    hpas = {d["metadata"]["name"]: d for d in _kind(docs, "HorizontalPodAutoscaler")}
    for worker in workers:
        name = worker["metadata"]["name"]
        assert ("replicas" in worker["spec"]) == (mode == "none")
        assert (name in scaled) == (mode == "keda")
        assert (name in hpas) == (mode == "hpa")
    if mode == "keda":
        spot = scaled[f"{RELEASE}-inferbatch-worker-spot"]["spec"]["triggers"][0]
        dedicated = scaled[f"{RELEASE}-inferbatch-worker-dedicated"]["spec"]["triggers"][0]
        assert spot["type"] == dedicated["type"] == "prometheus"
        assert 'inferbatch_queue_depth{pool="spot"}' in spot["metadata"]["query"]
        assert dedicated["metadata"]["query"] == "max(inferbatch_dedicated_workers_desired)"
    if mode == "hpa":
        metric = hpas[f"{RELEASE}-inferbatch-worker-spot"]["spec"]["metrics"][0]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] == "inferbatch_queue_depth"


def test_monitoring_objects_only_with_the_prometheus_operator() -> None:
    without = render({})
    assert not _kind(without, "ServiceMonitor") and not _kind(without, "PrometheusRule")
    with_operator = render({}, [MONITORING])
    (monitor,) = _kind(with_operator, "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"http", "metrics"}
    jobs = {
        s["metadata"]["labels"].get("inferbatch.io/job") for s in _kind(with_operator, "Service")
    }
    assert jobs == {"inferbatch-api", "inferbatch-scheduler", "inferbatch-worker"}


# --- the chart's copies of deploy/prometheus/rules and deploy/grafana/dashboards ----------

COPIES = [
    (ROOT / "deploy" / "prometheus" / "rules", CHART / "files" / "prometheus", "*.yml"),
    (ROOT / "deploy" / "grafana" / "dashboards", CHART / "files" / "grafana", "*.json"),
]


@pytest.mark.parametrize(("source", "copy", "pattern"), COPIES, ids=["rules", "dashboards"])
def test_chart_copies_equal_the_deploy_files(source: Path, copy: Path, pattern: str) -> None:
    originals = {p.name: p.read_bytes() for p in sorted(source.glob(pattern))}
    copies = {p.name: p.read_bytes() for p in sorted(copy.glob(pattern))}
    assert copies == originals, (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: "
        f"rm -f {copy.relative_to(ROOT)}/{pattern} && "
        f"cp {source.relative_to(ROOT)}/{pattern} {copy.relative_to(ROOT)}/"
    )


def test_prometheus_rule_embeds_every_rule_group() -> None:
    expected = [
        group
        for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    rules = _kind(render({}, [MONITORING]), "PrometheusRule")
    if not expected:
        assert not rules
        return
    (rule,) = rules
    assert rule["spec"]["groups"] == expected


def test_dashboards_are_config_maps_for_the_grafana_sidecar() -> None:
    expected = {
        p.name: json.loads(p.read_text())
        for p in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    }
    maps = [
        m
        for m in _kind(render({}), "ConfigMap")
        if m["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    found = {name: json.loads(text) for m in maps for name, text in m["data"].items()}
    assert found == expected


def test_behind_a_transaction_pooler_what_needs_a_session_gets_its_own_url() -> None:
    direct = "postgresql://inferbatch:pw@postgresql:5432/inferbatch"
    docs = render(
        {
            "database": {
                "url": "postgresql://inferbatch:pw@pgbouncer:6432/inferbatch",
                "poolMode": "transaction",
                "sessionUrl": direct,
            }
        }
    )
    (secret,) = _kind(docs, "Secret")
    assert secret["stringData"]["database-session-url"] == direct
    containers = dict(_containers(docs))
    assert containers
    for name, container in containers.items():
        env = {e["name"]: e for e in container["env"]}
        assert env[PREFIX + "DATABASE_POOL_MODE"]["value"] == "transaction", name
        ref = env[PREFIX + "DATABASE_SESSION_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "database-session-url", name


def test_a_transaction_pooler_without_a_session_url_is_refused() -> None:
    with pytest.raises(Exception, match="sessionUrl"):
        render({"database": {"poolMode": "transaction"}})


def test_the_default_sets_no_pool_mode() -> None:
    for _, container in _containers(render({})):
        assert PREFIX + "DATABASE_POOL_MODE" not in {e["name"] for e in container["env"]}


def _worker_env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _required_terms(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = deployment["spec"]["template"]["spec"].get("affinity", {})
    required = affinity.get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}
    )
    terms: list[dict[str, Any]] = required.get("nodeSelectorTerms", [])
    return terms


def test_one_spot_deployment_per_location_pinned_to_its_nodes_and_told_its_location() -> None:
    docs = render(_LOCATIONS)
    workers = {
        d["metadata"]["name"]: d
        for d in _kind(docs, "Deployment")
        if "-worker-" in d["metadata"]["name"]
    }
    zone, region = (
        f"{RELEASE}-inferbatch-worker-spot-us-east-1a",
        f"{RELEASE}-inferbatch-worker-spot-eu-west-1",
    )
    assert set(workers) == {zone, region, f"{RELEASE}-inferbatch-worker-dedicated"}
    for name, key, location in (
        (zone, "topology.kubernetes.io/zone", "us-east-1a"),
        (region, "topology.kubernetes.io/region", "eu-west-1"),
    ):
        worker = workers[name]
        assert _worker_env(worker)["INFERBATCH_LOCATION"] == location
        assert (
            worker["spec"]["template"]["metadata"]["labels"]["inferbatch.io/location"] == location
        )
        [term] = _required_terms(worker)
        assert {"key": key, "operator": "In", "values": [location]} in term["matchExpressions"]
        # the spot preferences of workers.spot stay
        preferred = worker["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        assert preferred["preferredDuringSchedulingIgnoredDuringExecution"]
    assert workers[zone]["spec"]["replicas"] == 3
    assert workers[region]["spec"]["replicas"] == 2
    # each has its own selector, so the Deployments never adopt each other's pods
    selectors = {
        json.dumps(w["spec"]["selector"]["matchLabels"], sort_keys=True) for w in workers.values()
    }
    assert len(selectors) == 3
    dedicated = workers[f"{RELEASE}-inferbatch-worker-dedicated"]
    assert "INFERBATCH_LOCATION" not in _worker_env(dedicated)
    services = {d["metadata"]["name"] for d in _kind(docs, "Service")}
    assert {f"{zone}-metrics", f"{region}-metrics"} <= services


def test_the_scheduler_places_spot_on_the_configured_locations() -> None:
    [scheduler] = [
        d
        for d in _kind(render(_LOCATIONS), "Deployment")
        if d["metadata"]["name"].endswith("-scheduler")
    ]
    env = _worker_env(scheduler)
    planned = Settings(spot_locations=json.loads(env["INFERBATCH_SPOT_LOCATIONS"])).spot_locations
    assert [(z.name, z.spot_price_ratio, z.boot_seconds) for z in planned] == [
        ("us-east-1a", 0.25, 180.0),
        ("eu-west-1", None, 240.0),
    ]
    [plain] = [
        d for d in _kind(render({}), "Deployment") if d["metadata"]["name"].endswith("-scheduler")
    ]
    assert "INFERBATCH_SPOT_LOCATIONS" not in _worker_env(plain)


def test_a_location_adds_its_zone_to_every_required_term_of_the_pool() -> None:
    required = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]},
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]},
        ]
    }
    values = _merge(
        _LOCATIONS,
        {
            "workers": {
                "spot": {
                    "affinity": {
                        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
                    }
                }
            }
        },
    )
    docs = render(values)
    zone = _named(docs, "Deployment", f"{RELEASE}-inferbatch-worker-spot-us-east-1a")
    terms = _required_terms(zone)
    assert len(terms) == 2
    here = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}
    assert all(here in t["matchExpressions"] and len(t["matchExpressions"]) == 2 for t in terms)


def test_each_location_scales_on_its_desired_count_with_an_equal_share_until_published() -> None:
    docs = render(_merge(_LOCATIONS, {"autoscaling": {"mode": "keda"}}), [KEDA])
    scaled = {d["metadata"]["name"]: d["spec"] for d in _kind(docs, "ScaledObject")}
    zone = scaled[f"{RELEASE}-inferbatch-worker-spot-us-east-1a"]
    region = scaled[f"{RELEASE}-inferbatch-worker-spot-eu-west-1"]
    assert zone["maxReplicaCount"] == 7 and region["maxReplicaCount"] == 20
    for spec, location in ((zone, "us-east-1a"), (region, "eu-west-1")):
        [trigger] = spec["triggers"]
        query = trigger["metadata"]["query"]
        assert query.startswith(f'max(inferbatch_desired_spot_workers{{location="{location}"}})')
        assert 'inferbatch_queue_depth{pool="spot"}' in query and query.endswith("/ 100 / 2)")
        assert trigger["metadata"]["threshold"] == "1"
    dedicated = scaled[f"{RELEASE}-inferbatch-worker-dedicated"]["triggers"][0]
    assert dedicated["metadata"]["query"] == "max(inferbatch_dedicated_workers_desired)"
    hpa = render(_merge(_LOCATIONS, {"autoscaling": {"mode": "hpa"}}))
    [metric] = _named(
        hpa, "HorizontalPodAutoscaler", f"{RELEASE}-inferbatch-worker-spot-eu-west-1"
    )["spec"]["metrics"]
    assert metric["external"]["target"]["averageValue"] == "200"


def test_without_locations_one_spot_deployment_and_an_optional_fixed_location() -> None:
    docs = render({"workers": {"dedicated": {"location": "us-east-1"}}})
    spot = _named(docs, "Deployment", f"{RELEASE}-inferbatch-worker-spot")
    dedicated = _named(docs, "Deployment", f"{RELEASE}-inferbatch-worker-dedicated")
    assert "INFERBATCH_LOCATION" not in _worker_env(spot)
    assert _worker_env(dedicated)["INFERBATCH_LOCATION"] == "us-east-1"
    assert Settings(location=_worker_env(dedicated)["INFERBATCH_LOCATION"]).location == "us-east-1"


def test_a_location_query_reads_the_published_target_or_an_equal_share(tmp_path: Path) -> None:
    """The rendered KEDA query, evaluated by promtool: 400 queued spot requests, 100 per
    worker, two locations: 2 workers each until the location's own target (5) appears."""
    from tests.monitoring.monitoring import run_tool, tool

    docs = render(_merge(_LOCATIONS, {"autoscaling": {"mode": "keda"}}), [KEDA])
    spec = _named(docs, "ScaledObject", f"{RELEASE}-inferbatch-worker-spot-us-east-1a")["spec"]
    query = spec["triggers"][0]["metadata"]["query"]
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "wanted", "expr": query}]}]})
    )
    series = [
        {"series": 'inferbatch_queue_depth{pool="spot", priority="normal"}', "values": "400x10"},
        {"series": "inferbatch_spot_workers_enabled", "values": "1x10"},
        {
            "series": 'inferbatch_desired_spot_workers{location="us-east-1a"}',
            "values": "_x5 5x5",
        },
        {"series": 'inferbatch_desired_spot_workers{location="eu-west-1"}', "values": "9x10"},
    ]
    expect = [
        {"expr": "wanted", "eval_time": "2m", "exp_samples": [{"labels": "wanted", "value": 2}]},
        {"expr": "wanted", "eval_time": "8m", "exp_samples": [{"labels": "wanted", "value": 5}]},
    ]
    tests = tmp_path / "tests.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": expect}],
            }
        )
    )
    out = run_tool(tool("promtool"), "test", "rules", tests)
    assert "SUCCESS" in out
