"""Rules for the rendered Kubernetes manifests that a schema cannot say.

    python check_k8s.py RENDERED.yaml [--crd-json OUT.json]

Checks, for one `kubectl kustomize` output:
- every namespaced object has a namespace;
- every workload runs non-root with a read-only root filesystem, no
  privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
  no service-account token, and requests and limits for CPU and memory;
- every Deployment has a /readyz readiness and a /healthz liveness probe on
  a port it declares, that port is the one its *_BIND setting listens on,
  and a PodDisruptionBudget selects it;
- Services, the Ingress, PDBs and autoscalers point at things that exist;
- secrets (database URLs, tokens, keys, credentials) come from Secrets only,
  never from a ConfigMap or a literal, and no Secret is part of the files;
  a secret's file (a `*_FILE` setting, e.g. SECRETS_KEY_FILE) is a literal
  path into a read-only mount of a Secret volume of that container.
Objects of custom resources (CRDs) are written to --crd-json for their own
schema check (crds.mjs). Exit status 1 with one line per problem.
"""

import argparse
import json
import re
import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "IngressClass"}
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2",
                  "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}
SECRET_NAME = re.compile(r"(DATABASE_URL|SECRET|TOKEN|PASSWORD|CREDS|NKEY)")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")


class Report:
    def __init__(self):
        self.problems = []

    def add(self, where, what):
        self.problems.append(f"{where}: {what}")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_spec(obj):
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_security(where, spec, r):
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        r.add(where, "pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        r.add(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        r.add(where, "automountServiceAccountToken must be false")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            r.add(cw, "allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            r.add(cw, "readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            r.add(cw, "capabilities.drop must contain ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in res.get(part, {}):
                    r.add(cw, f"resources.{part}.{what} is missing")


def container_env(c, configmaps):
    """Literal and ConfigMap values of a container's environment, by name."""
    env = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and ref.get("name") in configmaps:
            env.update(configmaps[ref["name"]].get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def secret_mounts(c, spec):
    """The mount paths of the container's read-only Secret volumes."""
    secret_volumes = {v.get("name") for v in spec.get("volumes", []) if "secret" in v}
    return [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])
            if m.get("name") in secret_volumes and m.get("readOnly") is True]


def check_secrets(where, c, spec, configmaps, r):
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"].get("name")
            if name not in configmaps:
                r.add(where, f"envFrom names ConfigMap {name}, which the files do not define")
                continue
            for key, value in configmaps[name].get("data", {}).items():
                if SECRET_NAME.search(key) or URL_WITH_PASSWORD.search(str(value)):
                    r.add(where, f"{key} comes from ConfigMap {name}; secrets belong in a Secret")
    mounts = secret_mounts(c, spec)
    for e in c.get("env", []):
        name = e.get("name", "")
        if "value" in e and name.endswith("_FILE") and SECRET_NAME.search(name):
            path = str(e["value"])
            if not any(path.startswith(m + "/") for m in mounts):
                r.add(where, f"{name} is {path}, not a file of a read-only Secret volume mount")
            continue
        if "value" in e and (SECRET_NAME.search(name) or URL_WITH_PASSWORD.search(str(e["value"]))):
            r.add(where, f"{name} is a literal value; secrets belong in a Secret")
        if "configMapKeyRef" in e.get("valueFrom", {}) and SECRET_NAME.search(name):
            r.add(where, f"{name} comes from a ConfigMap; secrets belong in a Secret")


def named_ports(c):
    return {p.get("name"): p["containerPort"] for p in c.get("ports", []) if "containerPort" in p}


def check_probes(where, c, configmaps, r):
    ports = named_ports(c)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        if not get:
            r.add(where, f"{probe} must be an httpGet of {path}")
            continue
        if get.get("path") != path:
            r.add(where, f"{probe} path is {get.get('path')}, not {path}")
        port = get.get("port")
        if port not in ports and port not in ports.values():
            r.add(where, f"{probe} port {port} is not a port of the container")
    binds = [v for k, v in container_env(c, configmaps).items() if k.endswith("_BIND")]
    for bind in binds:
        port = int(str(bind).rsplit(":", 1)[-1])
        if port not in ports.values():
            r.add(where, f"listens on {bind} but declares container ports {sorted(ports.values())}")


def check(objs, r):
    namespace = next((o["metadata"]["name"] for o in objs if o.get("kind") == "Namespace"), None)
    configmaps = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
    deployments = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Service"}
    pdbs = [o for o in objs if o.get("kind") == "PodDisruptionBudget"]
    crds = []

    for o in objs:
        where = ident(o)
        kind = o.get("kind")
        meta = o.get("metadata", {})
        if kind not in CLUSTER_SCOPED:
            if not meta.get("namespace"):
                r.add(where, "has no namespace")
            elif namespace and meta["namespace"] != namespace:
                r.add(where, f"is in namespace {meta['namespace']}, not {namespace}")
        if o.get("apiVersion") not in BUILTIN_GROUPS:
            crds.append(o)
        if kind == "Secret":
            r.add(where, "a Secret is part of the files; create it outside them")
        tpl = pod_spec(o)
        if tpl is None:
            continue
        spec = tpl["spec"]
        check_security(where, spec, r)
        for c in spec.get("containers", []):
            cw = f"{where} container {c.get('name')}"
            check_secrets(cw, c, spec, configmaps, r)
            if kind == "Deployment":
                check_probes(cw, c, configmaps, r)
        if kind == "Deployment":
            labels = tpl["metadata"].get("labels", {})
            if not any(matches(p["spec"].get("selector", {}).get("matchLabels"), labels) for p in pdbs):
                r.add(where, "no PodDisruptionBudget selects its pods")

    for name, svc in services.items():
        sel = svc["spec"].get("selector", {})
        backing = [d for d in deployments.values()
                   if matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
        if not backing:
            r.add(f"Service/{name}", "selects no Deployment's pods")
        for d in backing:
            ports = {}
            for c in d["spec"]["template"]["spec"]["containers"]:
                ports.update(named_ports(c))
            for p in svc["spec"].get("ports", []):
                tp = p.get("targetPort", p.get("port"))
                if tp not in ports and tp not in ports.values():
                    r.add(f"Service/{name}", f"targetPort {tp} is not a port of Deployment/{d['metadata']['name']}")

    for o in objs:
        where = ident(o)
        if o.get("kind") == "Ingress":
            for rule in o["spec"].get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    svc = path["backend"]["service"]
                    if svc["name"] not in services:
                        r.add(where, f"{path['path']} goes to Service {svc['name']}, which does not exist")
                        continue
                    names = {p.get("name") for p in services[svc["name"]]["spec"]["ports"]}
                    numbers = {p.get("port") for p in services[svc["name"]]["spec"]["ports"]}
                    port = svc["port"]
                    if port.get("name") not in names and port.get("number") not in numbers:
                        r.add(where, f"{path['path']} uses port {port} that Service {svc['name']} lacks")
        if o.get("kind") == "PodDisruptionBudget":
            sel = o["spec"].get("selector", {}).get("matchLabels")
            if not any(matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))
                       for d in deployments.values()):
                r.add(where, "selects no Deployment's pods")
        if o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = o["spec"]["scaleTargetRef"]
            if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
                r.add(where, f"scales {target}, which is not a Deployment of the files")
    return crds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--crd-json", help="write the custom resources here as a JSON list")
    args = parser.parse_args()
    r = Report()
    crds = check(load(args.rendered), r)
    if args.crd_json:
        with open(args.crd_json, "w", encoding="utf-8") as f:
            json.dump(crds, f)
    for p in r.problems:
        print(f"{args.rendered}: {p}", file=sys.stderr)
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
