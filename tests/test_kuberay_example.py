"""docs/kuberay-webui.yaml, the KubeRay example the README's "Scaling out" points at: the head pod runs app.py on the
Ray cluster with flags app.py accepts, every pod reads the models read-only at the same path, the outputs and
history stay on the head, and nothing but the UI port is published."""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

import app

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = list(yaml.safe_load_all((ROOT / "docs" / "kuberay-webui.yaml").read_text(encoding="utf-8")))


def only(kind: str) -> dict:
    (document,) = [document for document in MANIFEST if document["kind"] == kind]
    return document


RAY_CLUSTER = only("RayCluster")
HEAD = RAY_CLUSTER["spec"]["headGroupSpec"]
WORKER_GROUPS = RAY_CLUSTER["spec"]["workerGroupSpecs"]


def container(group: dict) -> dict:
    (first,) = group["template"]["spec"]["containers"]
    return first


def app_flags() -> list[str]:
    """The flags the head pod's script passes to app.py."""
    script = container(HEAD)["args"][0].replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if "app.py" in line]
    words = shlex.split(line)
    return words[words.index("app.py") + 1:]


def mount_at(group: dict, path: Path) -> tuple[dict, dict]:
    """The volume mount whose folder holds `path` (the deepest one) and the pod volume behind it."""
    mounts = [mount for mount in container(group)["volumeMounts"] if path.is_relative_to(mount["mountPath"])]
    assert mounts, f"{path} is on no volume of group {group.get('groupName', 'head')}"
    mount = max(mounts, key=lambda mount: len(mount["mountPath"]))
    (volume,) = [volume for volume in group["template"]["spec"]["volumes"] if volume["name"] == mount["name"]]
    return mount, volume


def claim(volume: dict) -> str | None:
    return volume.get("persistentVolumeClaim", {}).get("claimName")


def test_the_head_runs_the_app_on_the_ray_cluster_with_flags_it_accepts():
    args = app.parse_args(app_flags())
    assert args.ray_address == "auto"
    assert args.listen and args.gradio_auth_path, "reachable from the cluster's network, so behind a login"
    assert HEAD["rayStartParams"]["num-cpus"] == "0", "no generation worker on the head pod"
    service = only("Service")
    assert service["spec"]["selector"] == {"ray.io/cluster": RAY_CLUSTER["metadata"]["name"],
                                           "ray.io/node-type": "head"}
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [args.port]


def test_every_pod_reads_the_models_read_only_at_the_head_s_paths():
    args = app.parse_args(app_flags())
    assert args.embeddings_dir.is_relative_to(args.models_dir), "workers read the embeddings too"
    claims = set()
    for group in [HEAD, *WORKER_GROUPS]:
        mount, volume = mount_at(group, args.models_dir)
        assert mount["mountPath"] == str(args.models_dir) and mount["readOnly"] is True
        assert volume["persistentVolumeClaim"]["readOnly"] is True
        claims.add(claim(volume))
    (models_claim,) = claims
    models = [document for document in MANIFEST if document["kind"] == "PersistentVolumeClaim"
              and document["metadata"]["name"] == models_claim]
    assert models and set(models[0]["spec"]["accessModes"]) & {"ReadOnlyMany", "ReadWriteMany"}


def test_outputs_and_history_stay_on_the_head():
    args = app.parse_args(app_flags())
    _, head_volume = mount_at(HEAD, args.outputs_dir)
    head_claim = claim(head_volume)
    assert head_claim, "the outputs and history outlive the head pod"
    for group in WORKER_GROUPS:
        volumes = group["template"]["spec"]["volumes"]
        assert head_claim not in {claim(volume) for volume in volumes}


def test_ray_s_ports_and_dashboard_stay_private():
    assert HEAD["rayStartParams"].get("dashboard-host", "127.0.0.1") == "127.0.0.1"
    assert len([document for document in MANIFEST if document["kind"] in ("Service", "Ingress")]) == 1
    policy = only("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"ray.io/cluster": RAY_CLUSTER["metadata"]["name"]}
    for rule in policy["ingress"]:
        sources = rule.get("from")
        if sources:  # only this RayCluster's own pods
            assert sources == [{"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}]
        else:  # anyone: the UI port only
            assert [port["port"] for port in rule["ports"]] == [app.parse_args(app_flags()).port]


def test_every_ray_process_requires_the_cluster_s_token():
    for group in [HEAD, *WORKER_GROUPS]:
        env = {variable["name"]: variable for variable in container(group)["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "sd-webui-ray-token", "key": "token"}
