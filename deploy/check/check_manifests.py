#!/usr/bin/env python3
"""Checks what the schema validators and checkov cannot: that the rendered manifests agree
with the server they run.

    check_manifests.py --binary target/debug/deeprecall [--compose deploy/compose.yaml] RENDERED.yaml...
    check_manifests.py --binary ... --self-test RENDERED.yaml...

For each rendered kustomization (one YAML stream per overlay or overlay + component):
  - the ConfigMap's deeprecall.toml, with the container's environment, is a configuration the
    server accepts (`deeprecall serve --check-config`, which binds and opens nothing);
  - the ports the server listens on (gRPC, metrics) are the container's named ports, the
    probes', the Services' targets and the scrape annotation's;
  - the startup and readiness probes ask grpc.health.v1 for the service name the server
    registers (SERVICE_NAME in src/server/mod.rs); liveness asks for the server ("");
    with TLS on (components/tls) they are exec probes running the image's
    `deeprecall health` against https://127.0.0.1:<listen port> with a --tls-ca from a
    mounted volume (the kubelet's gRPC probes speak no TLS), and the gRPC Services say
    appProtocol https instead of h2c;
  - terminationGracePeriodSeconds exceeds the preStop pause + shutdown_grace_seconds + the
    time the server gives running queries after the grace (ABORT_GRACE in src/server);
    mesh sidecars outlive that drain;
  - selectors (Services, PDB, NetworkPolicy, ServiceMonitor, HPA, DestinationRule) select
    the pods or objects they mean; the pod runs as the image's user;
  - no Secret is committed, and every checkov skip names its check and a reason.
With --compose, compose.yaml and its Envoy configuration likewise: the replicas' environment
passes --check-config, the health check, Envoy's upstream port and health-checked service
name, and stop_grace_period agree with the server.

--self-test breaks one thing at a time in memory and fails unless each break is caught; the
TLS breaks run on the rendering with components/tls found beside each file (NAME-tls.yaml).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# Example values for Secret-backed variables, so that the configuration check sees a value of
# the right shape where the cluster would put the Secret's.
SECRET_EXAMPLES = {
    "DEEPRECALL_DATABASE_URL": "postgres://deeprecall@postgres:5432/deeprecall",
    "DEEPRECALL_REDIS_URL": "redis://redis:6379",
}


def source_constant(pattern: str, path: str) -> str:
    text = (REPO / path).read_text()
    match = re.search(pattern, text)
    if not match:
        sys.exit(f"check_manifests: cannot find {pattern!r} in {path}")
    return match.group(1)


SERVICE_NAME = source_constant(r'pub const SERVICE_NAME: &str = "([^"]+)";', "src/server/mod.rs")
ABORT_GRACE = int(
    source_constant(r"const ABORT_GRACE: Duration = Duration::from_secs\((\d+)\);", "src/server/mod.rs")
)


def image_user() -> tuple[int, int]:
    text = (REPO / "deploy/Dockerfile").read_text()
    match = re.search(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    if not match:
        sys.exit("check_manifests: deploy/Dockerfile has no numeric USER uid:gid")
    return int(match.group(1)), int(match.group(2))


def image_binary() -> str:
    """Where deploy/Dockerfile puts the deeprecall binary in the image."""
    text = (REPO / "deploy/Dockerfile").read_text()
    match = re.search(r"^COPY --from=build \S+ (/\S*/deeprecall)$", text, re.MULTILINE)
    if not match:
        sys.exit("check_manifests: deploy/Dockerfile copies no deeprecall binary into the image")
    return match.group(1)


def health_options(args: list[str]) -> dict[str, str]:
    """`deeprecall health`'s options, as `--name value` or `--name=value`."""
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if "=" in arg:
            name, _, value = arg.partition("=")
        else:
            name = arg
            value = args[index + 1] if index + 1 < len(args) else ""
            index += 1
        options[name] = value
        index += 1
    return options


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def selects(selector: dict, labels: dict) -> bool:
    match = (selector or {}).get("matchLabels", selector or {})
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def port_number(port, named: dict[str, int]) -> int | None:
    if isinstance(port, int):
        return port
    return named.get(port)


def check_config(binary: str, toml_text: str, env_list: list[dict], config_path: str) -> dict[str, str]:
    """Runs `deeprecall serve --check-config` as the container would; returns its summary."""
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "deeprecall.toml"
        config_file.write_text(toml_text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for item in env_list:
            name = item["name"]
            if "value" in item:
                env[name] = str(item["value"])
            elif "valueFrom" in item:
                env[name] = SECRET_EXAMPLES.get(name, "from-a-secret")
        if env.get("DEEPRECALL_CONFIG") != config_path:
            raise Failure(
                f"DEEPRECALL_CONFIG is {env.get('DEEPRECALL_CONFIG')!r}, "
                f"but the ConfigMap is mounted at {config_path}"
            )
        env["DEEPRECALL_CONFIG"] = str(config_file)
        # Files named by the environment come from mounted Secrets (checked below): a stand-in
        # with an example value, in case reading the configuration reads them.
        for name in [name for name in env if name.endswith("_FILE")]:
            stand_in = Path(scratch) / name.lower()
            stand_in.write_text("from-a-secret\n")
            env[name] = str(stand_in)
        run = subprocess.run(
            [binary, "serve", "--check-config"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode != 0:
            raise Failure(f"the server refuses the configuration: {run.stderr.strip()}")
    summary = {}
    for line in run.stdout.splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            summary[key.strip()] = value.strip()
        elif line.endswith(":"):
            summary[line[:-1].strip()] = ""
    return summary


class Failure(Exception):
    pass


def check(docs: list[dict], binary: str) -> list[str]:
    """Returns what is wrong with one rendered kustomization."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    workloads = [doc for doc in docs if doc.get("kind") in ("Deployment", "StatefulSet")]
    if len(workloads) != 1:
        return [f"expected one Deployment or StatefulSet, found {len(workloads)}"]
    workload = workloads[0]
    pod = workload["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    expect(selects(workload["spec"]["selector"], pod_labels), "the workload's selector misses its pods")
    containers = [c for c in spec["containers"] if c["name"] == "deeprecall"]
    if len(containers) != 1:
        return problems + ["no container named deeprecall"]
    container = containers[0]
    named = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    expect("grpc" in named and "metrics" in named, f"container ports are {named}, not grpc and metrics")

    # The configuration, as the server reads it.
    mounts = {mount["name"]: mount["mountPath"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    config_volume = volumes.get("config", {}).get("configMap", {}).get("name")
    config_maps = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "ConfigMap")}
    if config_volume not in config_maps:
        return problems + [f"the config volume names ConfigMap {config_volume!r}, which is not rendered"]
    toml_text = config_maps[config_volume]["data"].get("deeprecall.toml")
    if toml_text is None:
        return problems + ["the ConfigMap has no deeprecall.toml"]
    try:
        summary = check_config(
            binary, toml_text, container.get("env", []), f"{mounts.get('config')}/deeprecall.toml"
        )
    except Failure as failure:
        return problems + [str(failure)]
    listen_port = int(summary["listen"].rsplit(":", 1)[1])
    expect(
        summary["listen"].startswith("0.0.0.0:") or summary["listen"].startswith("[::]:"),
        f"the server listens on {summary['listen']}, unreachable from outside the pod",
    )
    expect(named.get("grpc") == listen_port, f"port grpc is {named.get('grpc')}, the server listens on {listen_port}")
    metrics = summary.get("metrics_listen", "")
    if not metrics:
        problems.append("the server serves no metrics (telemetry.metrics_listen is empty)")
    else:
        metrics_port = int(metrics.rsplit(":", 1)[1])
        expect(named.get("metrics") == metrics_port, f"port metrics is {named.get('metrics')}, the server's is {metrics_port}")
        annotation = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
        expect(annotation == str(metrics_port), f"prometheus.io/port is {annotation!r}, not {metrics_port}")

    # Files and directories the server needs are mounted: the root file system is read-only.
    def mount_of(path: str) -> str | None:
        under = [name for name, mount in mounts.items() if path == mount or path.startswith(mount.rstrip("/") + "/")]
        return max(under, key=lambda name: len(mounts[name]), default=None)

    data_mount = mount_of(summary.get("data_dir", ""))
    expect(data_mount is not None, f"data_dir {summary.get('data_dir')} is on the read-only root file system")
    env_values = {item["name"]: item.get("value") for item in container.get("env", [])}
    secret_files = {
        "auth.keys_file": summary.get("keys_file", ""),
        "llm.api_key_file": summary.get("llm_api_key_file", ""),
        "DEEPRECALL_DATABASE_PASSWORD_FILE": env_values.get("DEEPRECALL_DATABASE_PASSWORD_FILE") or "",
    }
    for setting, path in secret_files.items():
        if not path:
            continue
        volume = volumes.get(mount_of(path) or "", {})
        expect("secret" in volume, f"{setting} {path} is not in a mounted Secret")

    # Probes. The kubelet's gRPC probes speak no TLS: with TLS on, each probe is an exec probe
    # running the image's `deeprecall health` over https:// (components/tls).
    tls = summary.get("tls", "off")
    binaries = {image_binary(), "deeprecall"}
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_name)
        wanted = "" if probe_name == "livenessProbe" else SERVICE_NAME
        if probe and "grpc" in probe:
            expect(tls == "off", f"{probe_name} is a gRPC probe, which speaks no TLS, but the server's TLS is {tls}")
            expect(
                port_number(probe["grpc"]["port"], named) == listen_port,
                f"{probe_name} asks port {probe['grpc']['port']}, the server listens on {listen_port}",
            )
            service = probe["grpc"].get("service", "")
            expect(service == wanted, f"{probe_name} asks for service {service!r}, not {wanted!r}")
            continue
        if not probe or "exec" not in probe:
            problems.append(f"{probe_name} is neither a gRPC probe nor an exec probe running deeprecall health")
            continue
        command = [str(arg) for arg in probe["exec"].get("command", [])]
        if command[:2] not in ([binary, "health"] for binary in binaries):
            problems.append(f"{probe_name} runs {command[:2]}, not the image's {image_binary()} health")
            continue
        options = health_options(command[2:])
        server = options.get("--server", "http://127.0.0.1:50051")
        match = re.fullmatch(r"(https?)://(127\.0\.0\.1|localhost|\[::1\]):(\d+)/?", server)
        if not match:
            problems.append(f"{probe_name} asks {server!r}, not the pod's own address (127.0.0.1)")
            continue
        scheme, port = match.group(1), int(match.group(3))
        expect(port == listen_port, f"{probe_name} asks port {port}, the server listens on {listen_port}")
        if tls == "off":
            expect(scheme == "http", f"{probe_name} asks {server}, but the server speaks no TLS")
            continue
        expect(scheme == "https", f"{probe_name} asks {server}, but the server speaks only TLS")
        service = options.get("--service", SERVICE_NAME)
        expect(service == wanted, f"{probe_name} asks for service {service!r}, not {wanted!r}")
        ca = options.get("--tls-ca", "")
        expect(bool(ca), f"{probe_name} names no --tls-ca: the certificate would be checked against public roots")
        if ca:
            volume = volumes.get(mount_of(ca) or "", {})
            expect(
                "secret" in volume or "configMap" in volume,
                f"{probe_name}'s --tls-ca {ca} is not in a mounted Secret or ConfigMap",
            )
        if tls == "mutual":
            for option in ("--tls-client-cert", "--tls-client-key"):
                path = options.get(option, "")
                expect(
                    bool(path) and "secret" in volumes.get(mount_of(path) or "", {}),
                    f"{probe_name}: the server asks for client certificates, and {option} {path!r} is not in a mounted Secret",
                )
        timeout = float(options.get("--timeout", 5))
        expect(
            timeout <= probe.get("timeoutSeconds", 1),
            f"{probe_name} lets the check take {timeout:g} s, over its timeoutSeconds {probe.get('timeoutSeconds', 1)}",
        )

    # Drain time.
    grace = float(summary["shutdown_grace_seconds"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    period = spec.get("terminationGracePeriodSeconds", 30)
    drain = pause + grace + ABORT_GRACE
    expect(
        period > drain,
        f"terminationGracePeriodSeconds {period} does not exceed preStop {pause} s + "
        f"shutdown_grace_seconds {grace} + {ABORT_GRACE} s for running queries",
    )
    annotations = pod["metadata"].get("annotations", {})
    linkerd_wait = annotations.get("config.alpha.linkerd.io/proxy-wait-before-exit-seconds")
    if linkerd_wait is not None:
        expect(
            drain <= int(linkerd_wait) < period,
            f"the Linkerd proxy waits {linkerd_wait} s: not between the drain ({drain} s) and the grace period",
        )
    istio = annotations.get("proxy.istio.io/config")
    if istio is not None:
        match = re.search(r"terminationDrainDuration:\s*(\d+)s", istio)
        seconds = int(match.group(1)) if match else 5
        expect(
            drain <= seconds < period,
            f"the Istio sidecar drains {seconds} s: not between the drain ({drain} s) and the grace period",
        )

    # Identity and security.
    uid, gid = image_user()
    security = spec.get("securityContext", {})
    expect(
        (security.get("runAsUser"), security.get("runAsGroup")) == (uid, gid),
        f"the pod runs as {security.get('runAsUser')}:{security.get('runAsGroup')}, the image as {uid}:{gid}",
    )
    expect(spec.get("automountServiceAccountToken") is False, "the pod mounts a service account token")

    # Services.
    services = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Service")}
    for name in ("deeprecall", "deeprecall-headless"):
        service = services.get(name)
        if service is None:
            problems.append(f"no Service {name}")
            continue
        expect(selects(service["spec"]["selector"], pod_labels), f"Service {name} selects no server pod")
        ports = {port["name"]: port for port in service["spec"]["ports"]}
        grpc = ports.get("grpc")
        if grpc is None:
            problems.append(f"Service {name} has no port named grpc")
            continue
        app_protocol = "kubernetes.io/h2c" if tls == "off" else "https"
        expect(
            grpc.get("appProtocol") == app_protocol,
            f"Service {name}'s grpc port is {grpc.get('appProtocol')!r}, not {app_protocol} (TLS {tls})",
        )
        expect(
            port_number(grpc.get("targetPort"), named) == listen_port,
            f"Service {name} sends to {grpc.get('targetPort')}, the server listens on {listen_port}",
        )
    expect(services.get("deeprecall-headless", {}).get("spec", {}).get("clusterIP") == "None", "deeprecall-headless is not headless")
    if workload["kind"] == "StatefulSet":
        expect(workload["spec"].get("serviceName") in services, "the StatefulSet's serviceName is not a rendered Service")
    metrics_service = services.get("deeprecall-metrics")
    if metrics_service is None:
        problems.append("no Service deeprecall-metrics")
    else:
        target = metrics_service["spec"]["ports"][0]["targetPort"]
        expect(port_number(target, named) == named.get("metrics"), "deeprecall-metrics does not target the metrics port")
        for monitor in by_kind(docs, "ServiceMonitor"):
            expect(
                selects(monitor["spec"]["selector"], metrics_service["metadata"].get("labels", {})),
                "the ServiceMonitor selects no metrics Service",
            )
            metric_ports = {port["name"] for port in metrics_service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                expect(endpoint.get("port") in metric_ports, f"the ServiceMonitor scrapes port {endpoint.get('port')!r}")

    # Everything else that points at the pods or the workload.
    for budget in by_kind(docs, "PodDisruptionBudget"):
        expect(selects(budget["spec"]["selector"], pod_labels), "the PodDisruptionBudget selects no server pod")
    for policy in by_kind(docs, "NetworkPolicy"):
        expect(selects(policy["spec"]["podSelector"], pod_labels), "the NetworkPolicy selects no server pod")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port.get("port"), str):
                    expect(port["port"] in named, f"the NetworkPolicy admits port {port['port']!r}, not a container port")
    for autoscaler in by_kind(docs, "HorizontalPodAutoscaler"):
        target = autoscaler["spec"]["scaleTargetRef"]
        expect(
            (target["kind"], target["name"]) == (workload["kind"], workload["metadata"]["name"]),
            f"the HPA scales {target['kind']}/{target['name']}",
        )
    for rule in by_kind(docs, "DestinationRule"):
        expect(rule["spec"]["host"].split(".")[0] == "deeprecall", f"the DestinationRule is for {rule['spec']['host']}")

    # Secrets are referenced, never committed; skipped checks are justified.
    expect(not by_kind(docs, "Secret"), "a Secret is rendered: Secrets are created in the cluster, not committed")
    for doc in docs:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check_id, _, reason = str(value).partition("=")
                expect(
                    re.fullmatch(r"CKV2?_K8S_\d+", check_id) is not None and len(reason.strip()) >= 10,
                    f"{doc['kind']}/{doc['metadata']['name']}: skip {value!r} does not name a check and a reason",
                )
    return problems


def load(path: str) -> list[dict]:
    with open(path) as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def workload_of(docs: list[dict]) -> dict:
    return next(doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet"))


def container_of(docs: list[dict]) -> dict:
    return workload_of(docs)["spec"]["template"]["spec"]["containers"][0]


def config_map_of(docs: list[dict]) -> dict:
    return by_kind(docs, "ConfigMap")[0]


# Each break, and a fragment of the problem it must be reported as.
BREAKS = {
    "a short grace period": (
        lambda docs: workload_of(docs)["spec"]["template"]["spec"].__setitem__(
            "terminationGracePeriodSeconds", 20
        ),
        "terminationGracePeriodSeconds 20 does not exceed",
    ),
    "readiness on another service": (
        lambda docs: container_of(docs)["readinessProbe"]["grpc"].__setitem__(
            "service", "deeprecall.v1.Other"
        ),
        "readinessProbe asks for service 'deeprecall.v1.Other'",
    ),
    "a probe on another port": (
        lambda docs: container_of(docs)["livenessProbe"]["grpc"].__setitem__("port", 50052),
        "livenessProbe asks port 50052",
    ),
    "the server on another port": (
        lambda docs: config_map_of(docs)["data"].__setitem__(
            "deeprecall.toml",
            config_map_of(docs)["data"]["deeprecall.toml"].replace("0.0.0.0:50051", "0.0.0.0:50052"),
        ),
        "the server listens on 50052",
    ),
    "a setting the server does not know": (
        lambda docs: config_map_of(docs)["data"].__setitem__(
            "deeprecall.toml", config_map_of(docs)["data"]["deeprecall.toml"] + "\n[engine]\nmax_topk = 3\n"
        ),
        "the server refuses the configuration",
    ),
    "a longer drain": (
        lambda docs: config_map_of(docs)["data"].__setitem__(
            "deeprecall.toml",
            config_map_of(docs)["data"]["deeprecall.toml"].replace(
                "shutdown_grace_seconds = 25.0", "shutdown_grace_seconds = 40.0"
            ),
        ),
        "shutdown_grace_seconds 40.0",
    ),
    "a Service without h2c": (
        lambda docs: next(
            doc for doc in by_kind(docs, "Service") if doc["metadata"]["name"] == "deeprecall"
        )["spec"]["ports"][0].pop("appProtocol"),
        "Service deeprecall's grpc port is None, not kubernetes.io/h2c",
    ),
    "a key file outside its Secret": (
        lambda docs: config_map_of(docs)["data"].__setitem__(
            "deeprecall.toml",
            config_map_of(docs)["data"]["deeprecall.toml"].replace(
                "/etc/deeprecall/keys/keys.toml", "/etc/deeprecall/keys.toml"
            ),
        ),
        "auth.keys_file /etc/deeprecall/keys.toml is not in a mounted Secret",
    ),
    "an unjustified skip": (
        lambda docs: workload_of(docs)["metadata"]["annotations"].__setitem__(
            "checkov.io/skip9", "CKV_K8S_22"
        ),
        "does not name a check and a reason",
    ),
}


def set_probe_option(docs: list[dict], probe_name: str, option: str, value: str) -> None:
    """Sets one `deeprecall health` option of an exec probe, written as --option=value."""
    command = container_of(docs)[probe_name]["exec"]["command"]
    command[:] = [arg for arg in command if arg != option and not arg.startswith(option + "=")]
    command.append(f"{option}={value}")


# Breaks of a TLS rendering (components/tls): its exec probes.
TLS_BREAKS = {
    "an exec probe on another port": (
        lambda docs: set_probe_option(docs, "readinessProbe", "--server", "https://127.0.0.1:50052"),
        "readinessProbe asks port 50052",
    ),
    "a probe's CA outside any mounted volume": (
        lambda docs: set_probe_option(docs, "livenessProbe", "--tls-ca", "/etc/ssl/deeprecall-ca.crt"),
        "livenessProbe's --tls-ca /etc/ssl/deeprecall-ca.crt is not in a mounted Secret",
    ),
    "an exec probe in plaintext against TLS": (
        lambda docs: set_probe_option(docs, "startupProbe", "--server", "http://127.0.0.1:50051"),
        "startupProbe asks http://127.0.0.1:50051, but the server speaks only TLS",
    ),
    "liveness on the DeepRecall service": (
        lambda docs: set_probe_option(docs, "livenessProbe", "--service", SERVICE_NAME),
        f"livenessProbe asks for service {SERVICE_NAME!r}",
    ),
    "a gRPC probe against TLS": (
        lambda docs: container_of(docs).__setitem__(
            "startupProbe", {"grpc": {"port": 50051, "service": SERVICE_NAME}, "periodSeconds": 2}
        ),
        "startupProbe is a gRPC probe, which speaks no TLS",
    ),
    "another binary in a probe": (
        lambda docs: container_of(docs)["readinessProbe"]["exec"]["command"].__setitem__(0, "/bin/grpc_health_probe"),
        "readinessProbe runs ['/bin/grpc_health_probe', 'health']",
    ),
}


def has_exec_probes(docs: list[dict]) -> bool:
    return any("exec" in (container_of(docs).get(probe) or {}) for probe in ("startupProbe", "readinessProbe"))


def self_test(name: str, docs: list[dict], breaks: dict, binary: str) -> bool:
    """Applies each break to a copy of docs; True when every one is reported."""
    ok = True
    for what, (apply, expected) in breaks.items():
        broken = copy.deepcopy(docs)
        apply(broken)
        found = check(broken, binary)
        if any(expected in problem for problem in found):
            print(f"ok   {name}: caught {what}")
        else:
            ok = False
            print(f"FAIL {name}: {what} went unnoticed (reported: {found})")
    return ok


def dockerfile_env() -> dict[str, str]:
    """The ENV of deploy/Dockerfile's runtime stage."""
    text = (REPO / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)?", str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def check_compose(path: Path, binary: str) -> list[str]:
    """Checks deploy/compose.yaml and its Envoy configuration against the server."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    for name in ("deeprecall", "envoy", "postgres", "redis"):
        if name not in services:
            return [f"compose: no service {name}"]
    server = services["deeprecall"]
    expect(server.get("deploy", {}).get("replicas") == 3, "compose: deeprecall does not run three replicas")
    expect("pgvector" in services["postgres"]["image"], "compose: postgres is not the pgvector image")
    env = dict(dockerfile_env())
    env.update({name: str(value) for name, value in server.get("environment", {}).items()})
    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.run(
            [binary, "serve", "--check-config"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=scratch,
        )
    if run.returncode != 0:
        return problems + [f"compose: the server refuses its environment: {run.stderr.strip()}"]
    summary = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    listen_port = int(summary["listen"].rsplit(":", 1)[1])
    health = server["healthcheck"]["test"]
    expect(health[1:3] == ["deeprecall", "health"], f"compose: the health check is {health}")
    expect(
        any(arg.endswith(f":{listen_port}") for arg in health),
        f"compose: the health check does not ask port {listen_port}",
    )
    drain = float(summary["shutdown_grace_seconds"]) + ABORT_GRACE
    expect(
        seconds(server.get("stop_grace_period", "10s")) > drain,
        f"compose: stop_grace_period {server.get('stop_grace_period')} does not exceed the drain ({drain} s)",
    )
    for variable, service in (("DEEPRECALL_REDIS_URL", "redis"), ("DEEPRECALL_DATABASE_URL", "postgres")):
        expect(f"@{service}:" in env.get(variable, "") or f"//{service}:" in env.get(variable, ""),
               f"compose: {variable} does not point at the {service} service")

    mounts = [volume.split(":") for volume in services["envoy"].get("volumes", [])]
    envoy_files = [path.parent / source for source, target, *_ in mounts if target.endswith("envoy.yaml")]
    if not envoy_files or not envoy_files[0].exists():
        return problems + ["compose: Envoy's configuration file is not in deploy/compose/"]
    envoy = yaml.safe_load(envoy_files[0].read_text())
    listener_port = envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    published = [str(port).rsplit(":", 1)[-1] for port in services["envoy"].get("ports", [])]
    expect(str(listener_port) in published, f"compose: Envoy listens on {listener_port}, publishes {published}")
    for cluster in envoy["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                expect(address["address"] in services, f"compose: Envoy sends to {address['address']}, not a service")
                expect(address["port_value"] == listen_port, f"compose: Envoy sends to port {address['port_value']}")
        for health_check in cluster.get("health_checks", []):
            service_name = health_check.get("grpc_health_check", {}).get("service_name")
            expect(service_name == SERVICE_NAME, f"compose: Envoy health-checks {service_name!r}")
        expect("http2_protocol_options" in str(cluster), "compose: Envoy does not speak HTTP/2 to the replicas")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Absolute: the binary also runs from scratch directories, where a relative path is lost.
    parser.add_argument("--binary", required=True, type=os.path.abspath, help="the deeprecall binary")
    parser.add_argument("--self-test", action="store_true", help="check that breaks are caught")
    parser.add_argument("--compose", type=Path, help="also check this compose file")
    parser.add_argument("rendered", nargs="*")
    args = parser.parse_args()
    failed = False
    if args.compose:
        problems = check_compose(args.compose, args.binary)
        for problem in problems:
            print(f"FAIL {problem}")
        if not problems:
            print(f"ok   {args.compose.name} and its Envoy configuration")
        failed = bool(problems)
    for path in args.rendered:
        docs = load(path)
        problems = check(docs, args.binary)
        name = Path(path).stem
        if problems:
            failed = True
            for problem in problems:
                print(f"FAIL {name}: {problem}")
        else:
            print(f"ok   {name}")
        if args.self_test:
            if has_exec_probes(docs):
                failed |= not self_test(name, docs, TLS_BREAKS, args.binary)
                continue
            failed |= not self_test(name, docs, BREAKS, args.binary)
            # The TLS breaks need the rendering with components/tls, which .ci/deploy-check
            # writes beside each overlay's as NAME-tls.yaml.
            tls_path = Path(path).with_name(f"{name}-tls.yaml")
            if not tls_path.exists():
                failed = True
                print(f"FAIL {name}: no {tls_path.name} beside it for the TLS breaks")
                continue
            tls_docs = load(str(tls_path))
            problems = check(tls_docs, args.binary)
            if problems:
                failed = True
                print(f"FAIL {tls_path.stem}: {problems}")
                continue
            failed |= not self_test(tls_path.stem, tls_docs, TLS_BREAKS, args.binary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
