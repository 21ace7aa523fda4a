"""Every environment variable the deploy files set is one its binary accepts.

    python check_env.py --bin-dir DIR [--compose FILE ...] [--k8s RENDERED.yaml ...]
                        [--dockerfile FILE]

The names a binary accepts are the `[env: NAME]` entries of its `--help`
(every setting is a clap argument with `env = "…"`), read from the built
binaries in DIR, of the command and of the subcommand the deploy file runs
(`webhook-registry --help` and `webhook-registry migrate --help` for the
migration Job). Checked:
- docker-compose.yml: each service that runs one of our binaries, its
  `environment` (anchors and merge keys resolved);
- rendered Kubernetes manifests: each container of our image, its `env` and
  the keys of the ConfigMaps in its `envFrom`; a KEDA nats-jetstream
  trigger names the stream and durable consumer the worker really uses;
- the Dockerfile: each ENV of the runtime stage is accepted by at least one
  binary, every binary the deploy files run is built into the image, the
  runtime stage runs as a non-root USER, and the build stage builds the
  dependency layer (`cargo chef cook`) before it copies the source.
Exit status 1 with one line per problem.
"""

import argparse
import os
import re
import subprocess
import sys

import yaml

BINARIES = ("webhook-registry", "gateway", "delivery-worker", "outbox-relay", "eventctl")
ENV_IN_HELP = re.compile(r"\[env: ([A-Z][A-Z0-9_]*)")


class Binaries:
    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.helps = {}

    def help(self, binary, args):
        key = (binary, tuple(args))
        if key not in self.helps:
            path = os.path.join(self.bin_dir, binary)
            # A clean environment: values from the caller's shell would only
            # show up in the text, never change the names.
            out = subprocess.run([path, *args, "--help"], capture_output=True, text=True,
                                 env={"PATH": os.environ.get("PATH", "")}, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{path} {' '.join(args)} --help failed: {out.stderr.strip()}")
            self.helps[key] = out.stdout
        return self.helps[key]

    def accepted(self, binary, args):
        """Names read by the command and by every command above it: clap
        reads a parent's arguments from the environment whatever
        subcommand follows."""
        names = set()
        for n in range(len(args) + 1):
            names |= set(ENV_IN_HELP.findall(self.help(binary, args[:n])))
        return names

    def default_of(self, binary, env_name):
        """The `[default: …]` of the argument read from env_name, if any."""
        for block in re.split(r"\n\s*\n|\n(?=\s*-)", self.help(binary, [])):
            if f"[env: {env_name}" in block:
                m = re.search(r"\[default: ([^\]]*)\]", block)
                return m.group(1) if m else None
        return None


def subcommand_args(binary, args, bins):
    """The leading words of `args` that are subcommands (no flags, no values)."""
    words = []
    for a in args:
        if a.startswith("-"):
            break
        words.append(a)
    # Keep only as many as --help accepts (an argument is not a subcommand).
    while words:
        try:
            bins.help(binary, words)
            return words
        except SystemExit:
            words.pop()
    return words


def split_command(cmd):
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not cmd:
        return None, []
    binary = os.path.basename(cmd[0])
    return (binary, cmd[1:]) if binary in BINARIES else (None, [])


def check_names(where, binary, args, names, bins, problems):
    accepted = bins.accepted(binary, args)
    for name in sorted(names):
        if name not in accepted:
            shown = " ".join([binary, *args])
            problems.append(f"{where}: {name} is not a setting of `{shown}` (see its --help)")


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!reset`, `!override`), read as the
    value they carry."""


def _compose_tag(loader, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _compose_tag)


def check_compose(path, bins, problems, used):
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=ComposeLoader)  # noqa: S506 (a SafeLoader)
    checked = 0
    for name, svc in (doc.get("services") or {}).items():
        binary, args = split_command(svc.get("command"))
        if binary is None:
            continue
        args = subcommand_args(binary, args, bins)
        used.add(binary)
        env = svc.get("environment") or {}
        names = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        check_names(f"{path} service {name}", binary, args, names, bins, problems)
        checked += 1
    return checked


def check_k8s(path, bins, problems, used):
    with open(path, encoding="utf-8") as f:
        objs = [d for d in yaml.safe_load_all(f) if d]
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o.get("kind") == "ConfigMap"}
    checked = 0
    worker_env = {}
    for o in objs:
        spec = o.get("spec", {})
        tpl = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if not tpl:
            continue
        for c in tpl["spec"].get("initContainers", []) + tpl["spec"].get("containers", []):
            binary, args = split_command((c.get("command") or []) + (c.get("args") or []))
            if binary is None:
                continue
            used.add(binary)
            names = set()
            env = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    data = configmaps.get(src["configMapRef"]["name"])
                    if data is None:
                        problems.append(f"{path} {o['kind']}/{o['metadata']['name']}: ConfigMap "
                                        f"{src['configMapRef']['name']} is not in the files")
                        continue
                    names |= data.keys()
                    env.update(data)
                else:
                    problems.append(f"{path} {o['kind']}/{o['metadata']['name']}: envFrom {src} "
                                    "cannot be checked; name each variable in `env`")
            for e in c.get("env", []):
                names.add(e["name"])
                if "value" in e:
                    env[e["name"]] = e["value"]
            args = subcommand_args(binary, args, bins)
            where = f"{path} {o['kind']}/{o['metadata']['name']} container {c['name']}"
            check_names(where, binary, args, names, bins, problems)
            checked += 1
            if binary == "delivery-worker":
                worker_env = env
    for o in objs:
        if o.get("kind") != "ScaledObject":
            continue
        for t in o["spec"].get("triggers", []):
            if t.get("type") != "nats-jetstream":
                continue
            meta = t.get("metadata", {})
            consumer = worker_env.get("DELIVERY_CONSUMER") or bins.default_of("delivery-worker", "DELIVERY_CONSUMER")
            prefix = worker_env.get("NATS_PREFIX", "")
            stream = f"EVENTS_{prefix}" if prefix else "EVENTS"
            where = f"{path} ScaledObject/{o['metadata']['name']}"
            if meta.get("consumer") != consumer:
                problems.append(f"{where}: consumer {meta.get('consumer')!r}, the worker's is {consumer!r}")
            if meta.get("stream") != stream:
                problems.append(f"{where}: stream {meta.get('stream')!r}, the worker reads {stream!r}")
    return checked


def check_dockerfile(path, bins, problems, used):
    from dockerfile_parse import DockerfileParser

    with open(path, "rb") as f:
        dfp = DockerfileParser(fileobj=f)
        structure, envs = dfp.structure, dfp.envs
    accepted = set()
    for binary in BINARIES:
        accepted |= bins.accepted(binary, [])
    for name in sorted(envs):
        if name not in accepted:
            problems.append(f"{path}: ENV {name} is a setting of none of {', '.join(BINARIES)}")
    stages, stage = [], []
    for i in structure:
        if i["instruction"] == "FROM":
            stage = []
            stages.append(stage)
        stage.append(i)
    user = [i["value"] for i in stages[-1] if i["instruction"] == "USER"] if stages else []
    if not user or user[-1].split(":")[0] in ("0", "root"):
        problems.append(f"{path}: the runtime stage must end with a non-root USER")
    for st in stages:
        runs = [n for n, i in enumerate(st) if i["instruction"] == "RUN"]
        if not any("cargo build" in st[n]["value"] for n in runs):
            continue
        copy_all = next((n for n, i in enumerate(st)
                         if i["instruction"] == "COPY" and i["value"].split() == [".", "."]), None)
        cook = next((n for n in runs if "cargo chef cook" in st[n]["value"]), None)
        if cook is None or copy_all is None or cook > copy_all:
            problems.append(f"{path}: the build stage must cook the dependencies (cargo chef cook) "
                            "before copying the source (COPY . .)")
    built = " ".join(i["value"] for i in structure if i["instruction"] == "RUN")
    for binary in sorted(used):
        if not re.search(rf"(^|\s){re.escape(binary)}(\s|;|$)", built):
            problems.append(f"{path}: the deploy files run {binary}, which no RUN step puts in the image")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--compose", nargs="*", default=[])
    parser.add_argument("--k8s", nargs="*", default=[])
    parser.add_argument("--dockerfile")
    args = parser.parse_args()
    bins = Binaries(args.bin_dir)
    problems, used = [], set()
    checked = 0
    for path in args.compose:
        checked += check_compose(path, bins, problems, used)
    for path in args.k8s:
        checked += check_k8s(path, bins, problems, used)
    if args.dockerfile:
        check_dockerfile(args.dockerfile, bins, problems, used)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"environment check: {checked} containers/services, {len(problems)} problems", file=sys.stderr)
    return 1 if problems or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
