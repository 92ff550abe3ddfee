"""cluster.yaml is a valid Ray autoscaler configuration, checked with Ray's own schema
after Ray fills in its defaults, as `ray up` does."""
import copy
import pathlib

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = pathlib.Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validator(config):
    validate_config(prepare_config(copy.deepcopy(config)))


def test_it_keeps_the_dashboard_on_loopback_s3_on_an_instance_profile_and_installs_this_checkout(config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAYSTREAM_CHECKPOINT_STORAGE=s3://" in head_start
    for node_type in config["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
    text = CLUSTER_YAML.read_text()
    assert "aws_access_key" not in text.lower() and "AWS_SECRET" not in text
    assert config["file_mounts"]["~/raystream"] == "." and "~/raystream" in " ".join(config["setup_commands"])
    worker = config["available_node_types"]["ray.worker.default"]
    assert worker["max_workers"] > worker["min_workers"]  # room for the autoscaler


def test_a_malformed_config_is_refused(config):
    config["available_node_types"]["ray.worker.default"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError, match="'two' is not of type 'integer'"):
        validate_config(prepare_config(config))


def test_every_node_is_in_the_clusters_own_security_group_and_gets_both_keys(config):
    """Issue 22: inbound traffic only from the cluster's own nodes (a group the operator
    makes, not the one `ray up` would open to SSH from anywhere), and the Ray token and
    the checkpoint key shipped to every node, owner-only."""
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"], "every node type names the cluster's group"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"]["~/.raystream/checkpoint_key"] == "~/.raystream/checkpoint_key"
    assert "chmod 600 ~/.ray/auth_token ~/.raystream/checkpoint_key" in config["setup_commands"]
    assert "0.0.0.0/0" not in "".join(line for line in CLUSTER_YAML.read_text().splitlines()
                                      if not line.lstrip().startswith("#"))


def test_it_syncs_the_checkout_without_what_git_ignores_and_uses_rays_node_type_names(config):
    assert config["rsync_filter"] == [".gitignore"] and "**/.git" in config["rsync_exclude"]
    assert set(config["available_node_types"]) == {"ray.head.default", "ray.worker.default"}
    assert config["head_node_type"] == "ray.head.default"
    assert all("ImageId" not in t["node_config"] for t in config["available_node_types"].values())  # Ray's default


def test_it_keeps_its_placeholders_and_points_at_cluster_init():
    """The file in the repository names no account's resources: `raystream cluster init`
    writes a filled-in copy (cluster.local.yaml, git-ignored); the placeholders stay for
    the hand-editing path."""
    text = CLUSTER_YAML.read_text()
    assert "raystream cluster init --region" in text and "ray up cluster.local.yaml" in text
    values = [line.split("#")[0] for line in text.splitlines() if "REPLACE_ME" in line.split("#")[0]]
    assert len(values) == 5, values  # the group and the profile of each node type, and the bucket
