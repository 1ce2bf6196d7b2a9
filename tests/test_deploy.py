"""The image and the Kubernetes manifests, offline: no cluster and no Docker daemon are reachable here, so the
manifests are validated against the Kubernetes schemas (kubernetes-validate, strict) and the Dockerfile is
parsed with Docker's own parser; what the master reads from the ConfigMap must load with the harness."""


import dockerfile
import kubernetes_validate
import pytest
import yaml

from medianest_load.inputs import load_named
from medianest_load.paths import REPO_ROOT
from medianest_load.scenario import SCENARIO
from medianest_load.target_profile import TARGET_PROFILE

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"


def manifests() -> dict[str, dict]:
    documents = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[f"{document['kind']}/{document['metadata']['name']}"] = document
    return documents


@pytest.mark.parametrize("name", sorted(manifests()))
def test_every_manifest_validates_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(manifests()[name], KUBERNETES_VERSION, strict=True)


def test_master_job_workers_deployment_configmap_secret_and_results_fit_together(tmp_path):
    documents = manifests()
    assert {"Job/medianest-load-master", "Service/medianest-load-master", "Deployment/medianest-load-workers",
            "ConfigMap/medianest-load-inputs", "Secret/medianest-load-tokens",
            "PersistentVolumeClaim/medianest-load-results"} <= set(documents)
    master = documents["Job/medianest-load-master"]["spec"]["template"]["spec"]
    workers = documents["Deployment/medianest-load-workers"]["spec"]
    args = master["containers"][0]["args"]
    assert args[args.index("--expect-workers") + 1] == str(workers["replicas"])
    assert workers["template"]["spec"]["containers"][0]["args"] == ["worker", "--master", "medianest-load-master:5557"]
    for spec in (master, workers["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
    # what the master reads from the ConfigMap loads with the harness itself
    data = documents["ConfigMap/medianest-load-inputs"]["data"]
    (tmp_path / "profile.yaml").write_text(data["profile.yaml"])
    scenario_text = data["scenario.yaml"].replace("/etc/medianest-load/profile.yaml", str(tmp_path / "profile.yaml"))
    (tmp_path / "scenario.yaml").write_text(scenario_text)
    scenario = load_named(SCENARIO, str(tmp_path / "scenario.yaml"))
    assert [stage.users for stage in scenario.stages] == [50, 200, 500, 1000, 3000]
    assert load_named(TARGET_PROFILE, scenario.target_profile).name == "medianest-main"
    mounts = {mount["mountPath"] for mount in master["containers"][0]["volumeMounts"]}
    assert {"/etc/medianest-load", "/etc/medianest-load-tokens", "/results"} <= mounts
    assert args[args.index("--out") + 1] == "/results" and args[1] == "/etc/medianest-load/scenario.yaml"


def test_the_dockerfile_parses_runs_as_non_root_with_the_same_entry_point():
    commands = dockerfile.parse_file(str(REPO_ROOT / "Dockerfile"))
    by_name = {}
    for command in commands:
        by_name.setdefault(command.cmd.upper(), []).append(command)
    assert by_name["FROM"][0].value[0].startswith("python:3.11")
    (user,) = by_name["USER"]
    assert user.value[0] not in ("root", "0")
    assert by_name["ENTRYPOINT"][-1].value == ("medianest-load",)
    copied = {command.value[0] for command in by_name["COPY"]}
    assert {"medianest_load", "locustfiles", "analysis", "scenarios", "slo", "target_profiles"} <= copied
