#!/usr/bin/env python3
"""The offline checks of deploy/ that need Python (deploy/check.sh runs them with promtool and yamllint).

- Every Kustomize build (the base and each overlay) is rendered and each resource validated against the
  Kubernetes schemas of kubernetes-validate (strict: unknown fields fail); the custom resources (KEDA's
  ScaledObject, KServe's ClusterServingRuntime) against the committed schemas in deploy/schemas/.
- The resources agree with each other: selectors select the pod template, references name what the build has,
  probes name declared ports, the grace period covers the preStop pause and ferroserve's drain.
- The autoscaling pieces name the same metric: the HPA's metric is what prometheus-adapter serves, the adapter
  and the KEDA trigger read a series a recording rule records.
- Every Grafana panel query is written out as a recording rule (Grafana's variables replaced) for promtool to
  parse: see --dashboard-rules.

No kustomize binary can be installed here (no registry we reach has one), so `render` builds the subset of
Kustomize these files use and refuses any other key, so that a new feature fails here instead of being ignored.
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import referencing
import yaml

DEPLOY = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33.0"
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "kserve-clusterservingruntime-v1alpha1.json",
}
CLUSTER_SCOPED = {"Namespace", "ClusterServingRuntime", "ClusterRole", "ClusterRoleBinding"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator", "images"}
BUILDS = ["kubernetes/base", "kubernetes/overlays/hpa", "kubernetes/overlays/keda"]
STANDALONE = ["kserve/cluster-serving-runtime.yaml"]

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def load_all(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# ----- Kustomize, the subset used here -----------------------------------------------------------------------


def render(directory):
    """The resources `kubectl kustomize directory` gives, less the ConfigMap's hash suffix."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise SystemExit(f"{directory}/kustomization.yaml: keys this check does not render: {sorted(unknown)}")
    docs = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs += render(path) if path.is_dir() else load_all(path)
    for generator in kustomization.get("configMapGenerator", []):
        docs.append(config_map(directory, generator))
    for entry in kustomization.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise SystemExit(f"{directory}: labels with includeSelectors/includeTemplates are not rendered here")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for container in containers(docs):
            if container.get("image", "").split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def config_map(directory, generator):
    if set(generator) - {"name", "files", "literals"}:
        raise SystemExit(f"{directory}: configMapGenerator keys not rendered here: {sorted(generator)}")
    data = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=")
        data[key or Path(file).name] = (directory / file).read_text()
    for entry in generator.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = value
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def pod_spec(doc):
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "ClusterServingRuntime":
        return doc["spec"]
    return None


def containers(docs):
    for doc in docs:
        spec = pod_spec(doc)
        if spec:
            yield from spec.get("containers", []) + spec.get("initContainers", [])


# ----- schemas -------------------------------------------------------------------------------------------------


def kubernetes_definitions():
    package = Path(kubernetes_validate.__file__).parent
    path = package / f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json"
    return json.loads(path.read_text())


def validate(doc, where, definitions):
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in CUSTOM_SCHEMAS:
        schema = json.loads((DEPLOY / "schemas" / CUSTOM_SCHEMAS[key]).read_text())
        registry = referencing.Registry().with_resource(
            definitions["$id"], referencing.Resource.from_contents(definitions)
        )
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        for error in validator.iter_errors(doc):
            fail(name, f"{'/'.join(map(str, error.absolute_path))}: {error.message}")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        fail(name, f"{'/'.join(map(str, error.path))}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(name, f"no schema for {key} in Kubernetes {KUBERNETES_VERSION} nor in deploy/schemas")


# ----- consistency -------------------------------------------------------------------------------------------


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_consistency(docs, where):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for deployment in by_kind.get("Deployment", {}).values():
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        spec = template["spec"]
        if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
            fail(where, "the Deployment's selector does not select its pod template")
        for kind, path in [("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
                           ("NetworkPolicy", ("spec", "podSelector", "matchLabels"))]:
            for doc in by_kind.get(kind, {}).values():
                selector = doc
                for key in path:
                    selector = selector[key]
                if not selects(selector, labels):
                    fail(where, f"{kind}/{doc['metadata']['name']} does not select the Deployment's pods")
        for volume in spec.get("volumes", []):
            for kind, ref in [("ConfigMap", volume.get("configMap", {}).get("name")),
                              ("PersistentVolumeClaim", volume.get("persistentVolumeClaim", {}).get("claimName"))]:
                if ref and ref not in by_kind.get(kind, {}):
                    fail(where, f"volume {volume['name']} names {kind} {ref}, which the build does not have")
        account = spec.get("serviceAccountName")
        if account and account not in by_kind.get("ServiceAccount", {}):
            fail(where, f"the pods run as ServiceAccount {account}, which the build does not have")
        for container in spec["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    fail(where, f"{probe} of {container['name']} names port {port}, which it does not declare")
            check_grace(spec, container, by_kind, where)
        for service in by_kind.get("Service", {}).values():
            declared = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                if isinstance(port["targetPort"], str) and port["targetPort"] not in declared:
                    fail(where, f"Service port {port['name']} targets {port['targetPort']}, not a container port")
    for kind, ref in [("HorizontalPodAutoscaler", lambda d: d["spec"]["scaleTargetRef"]["name"]),
                      ("ScaledObject", lambda d: d["spec"]["scaleTargetRef"]["name"])]:
        for doc in by_kind.get(kind, {}).values():
            if ref(doc) not in by_kind.get("Deployment", {}):
                fail(where, f"{kind}/{doc['metadata']['name']} scales {ref(doc)}, which the build does not have")


def check_grace(spec, container, by_kind, where):
    """terminationGracePeriodSeconds >= the preStop pause + shutdown_grace_period (ferroserve's drain)."""
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = 30
    for config_map in by_kind.get("ConfigMap", {}).values():
        text = config_map.get("data", {}).get("config.properties", "")
        match = re.search(r"^shutdown_grace_period\s*=\s*(\d+)", text, re.M)
        if match:
            drain = int(match.group(1))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < pause + drain:
        fail(where, f"terminationGracePeriodSeconds {grace} < preStop {pause} s + drain {drain} s")


# ----- autoscaling: one metric from Prometheus to the HPA and KEDA ---------------------------------------------


def recorded_series():
    names = set()
    for path in sorted((DEPLOY / "prometheus").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def series_names(promql):
    """The metric names a PromQL expression reads (names followed by a selector or a range)."""
    words = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)", promql)
    return {w for w in words if w not in {"by", "without", "on", "ignoring", "group_left", "group_right"}}


def check_autoscaling():
    records = recorded_series()
    hpa = next(d for d in load_all(DEPLOY / "kubernetes/overlays/hpa/hpa.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter/values.yaml").read_text())
    served = set()
    for rule in adapter["rules"]["custom"]:
        source = series_names(rule["seriesQuery"])
        for name in source - records:
            fail("prometheus-adapter/values.yaml", f"seriesQuery reads {name}, which no recording rule records")
        for name in source:
            if re.search(rule["name"]["matches"], name):
                served.add(re.sub(rule["name"]["matches"], rule["name"]["as"], name))
        if set(rule["resources"]["overrides"]) != {"namespace", "pod"}:
            fail("prometheus-adapter/values.yaml", "a per-pod metric needs the namespace and pod overrides")
    for name in wanted - served:
        fail("kubernetes/overlays/hpa/hpa.yaml", f"the HPA asks for {name}, which prometheus-adapter does not serve")
    scaled = next(d for d in load_all(DEPLOY / "kubernetes/overlays/keda/scaledobject.yaml"))
    for trigger in scaled["spec"]["triggers"]:
        for name in series_names(trigger["metadata"]["query"]) - records:
            fail("kubernetes/overlays/keda/scaledobject.yaml", f"the query reads {name}, which no rule records")


# ----- the dashboard -------------------------------------------------------------------------------------------


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "${namespace}": ".*",
                     "$namespace": ".*", "${model}": ".*", "$model": ".*", "${pod}": ".*", "$pod": ".*"}


def panel_queries(dashboard):
    """(panel title, PromQL with Grafana's variables replaced) for every target of every panel."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            yield panel["title"], expr


def check_dashboard(rules_out):
    dashboard = json.loads((DEPLOY / "grafana/ferroserve-dashboard.json").read_text())
    queries = list(panel_queries(dashboard))
    if not queries:
        fail("grafana", "the dashboard has no queries")
    for title, expr in queries:
        if "$" in expr:
            fail("grafana", f"panel {title!r}: a variable this check does not know: {expr}")
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard-rules", required=True, help="where to write the dashboard's queries as rules")
    args = parser.parse_args()
    definitions = kubernetes_definitions()
    count = 0
    for build in BUILDS:
        docs = render(DEPLOY / build)
        for doc in docs:
            validate(copy.deepcopy(doc), build, definitions)
        check_consistency(docs, build)
        count += len(docs)
    for path in STANDALONE:
        for doc in load_all(DEPLOY / path):
            validate(doc, path, definitions)
            count += 1
    check_autoscaling()
    check_dashboard(args.dashboard_rules)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{count} resources in {len(BUILDS)} builds and {len(STANDALONE)} files: "
          f"{'ok' if not failures else f'{len(failures)} failures'} (Kubernetes {KUBERNETES_VERSION})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
