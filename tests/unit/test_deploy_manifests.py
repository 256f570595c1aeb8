"""The Kubernetes example (deploy/k8s) parses and agrees with the worker's settings.

No cluster is involved: the manifests are loaded with a YAML parser and checked for what the
guide (deploy/README.md) promises: every RECSTREAM_* variable they set is one the worker
reads, the probes and the metrics Service use the metrics port, the RocksDB folder is on the
volume, the SASL credentials come from the Secret.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
STREAMS = Path(__file__).resolve().parents[2] / "streams"
SOURCES = [STREAMS / name for name in ("config.py", "security.py", "metrics.py")] + sorted((STREAMS / "cli").glob("*.py"))


def load() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's own file, not a Kubernetes object
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: {doc.keys()}"
            out.setdefault(doc["kind"], []).append(doc)
    return out


def known_variables() -> set[str]:
    """Every RECSTREAM_* name the worker and its settings read: from the source, and those
    ``recstream worker --help`` names (a flag's variable is named after the flag where it is declared)."""
    from recstream.streams.cli import build_parser
    from recstream.streams.cli.configfile import commands

    text = "\n".join(p.read_text() for p in SOURCES if p.exists()) + commands(build_parser())["worker"].format_help()
    names = set(re.findall(r"RECSTREAM_[A-Z0-9_]+", text))
    names |= {f"RECSTREAM_{n}" for n in re.findall(r'_env\("([A-Z0-9_]+)"', text)}
    return names


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    manifests = load()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {"ConfigMap", "Secret", "Job", "StatefulSet", "Service", "PodDisruptionBudget"} <= manifests.keys()


def test_the_settings_are_variables_the_worker_reads() -> None:
    (config,) = load()["ConfigMap"]
    (secret,) = load()["Secret"]
    ours = [k for k in config["data"] if k.startswith("RECSTREAM_")] + list(secret["stringData"])
    unknown = sorted(set(ours) - known_variables())
    assert not unknown, f"not read by recstream: {unknown}"
    assert {"RECSTREAM_SASL_USERNAME", "RECSTREAM_SASL_PASSWORD"} == set(secret["stringData"])
    assert not any("PASSWORD" in k for k in config["data"]), "the password belongs in the Secret"
    assert all(isinstance(v, str) for v in config["data"].values())


def test_the_statefulset_keeps_state_on_its_volume_and_probes_the_metrics_port() -> None:
    manifests = load()
    (config,) = manifests["ConfigMap"]
    (sts,) = manifests["StatefulSet"]
    spec = sts["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    port = int(config["data"]["RECSTREAM_METRICS_PORT"])
    assert config["data"]["RECSTREAM_METRICS_HOST"] == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] in ("/health", "/ready")
    (claim,) = spec["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert config["data"]["RECSTREAM_DATA_DIR"].startswith(mount["mountPath"].rstrip("/") + "/")
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
        config["metadata"]["name"],
        manifests["Secret"][0]["metadata"]["name"],
    }
    services = {s["metadata"]["name"]: s for s in manifests["Service"]}
    assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"
    metrics = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert metrics and all(p["port"] == port for s in metrics for p in s["spec"]["ports"])
    labels = spec["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_the_topics_job_creates_replicated_topics_with_the_workers_partition_count() -> None:
    (job,) = load()["Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["recstream", "topics", "create"]
    assert command[command.index("--replication-factor") + 1] == "3"
    assert command[command.index("--partitions") + 1] == "$(RECSTREAM_PARTITIONS)"
