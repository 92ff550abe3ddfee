"""`raystream cluster init` against moto's server (real boto3 calls): the security group,
the roles and instance profiles, the bucket, and a filled-in cluster.yaml that Ray's
validator accepts; a second run reuses everything; the world and missing credentials are
refused in one line."""
from __future__ import annotations

import copy
import json
import pathlib
import shutil
import subprocess
import uuid

import pytest
import yaml
from click.testing import CliRunner
from ray.autoscaler._private.util import prepare_config, validate_config

from raystream.cli import aws as aws_resources
from raystream.cli import cluster_init, main
from raystream.errors import CloudSetupError
from tests.conftest import SECRETS

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "cluster.yaml"
CIDR = "203.0.113.0/24"


@pytest.fixture
def aws(s3_endpoint, monkeypatch):
    """moto's server in the environment, and no 15 s wait for new instance profiles."""
    monkeypatch.setattr(cluster_init, "PROFILE_PROPAGATION_S", 0.0)
    return s3_endpoint


def init(tmp_path: pathlib.Path, *args: str) -> tuple[int, list[str], pathlib.Path]:
    """Run `raystream cluster init` with the repository's cluster.yaml; its exit status,
    its lines and the path of the written config."""
    output = tmp_path / "cluster.local.yaml"
    result = CliRunner().invoke(main, ["cluster", "init", "--template", str(TEMPLATE), "--output", str(output),
                                       *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    print(result.output)  # stdout and stderr, which a failed assertion on the status shows
    return result.exit_code, result.stdout.splitlines(), output


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def boto(service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region)


def ingress(group_id: str, region: str) -> list[dict]:
    group = boto("ec2", region).describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return [{k: v for k, v in p.items() if v} for p in group["IpPermissions"]]


def inline_policies(role: str) -> dict[str, dict]:
    iam = boto("iam", "us-east-1")
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    return {n: iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names}


def test_init_makes_the_group_roles_profiles_and_bucket_and_writes_a_config_rays_validator_accepts(aws, tmp_path):
    name = unique("c")
    status, lines, output = init(tmp_path, "--region", "us-east-1", "--ssh-cidr", CIDR, "--cluster-name", name)
    assert status == 0, lines
    assert [line.split()[0] for line in lines] == ["made"] * 6 + ["wrote"], lines
    assert any(line.startswith("made   bucket raystream-123456789012-us-east-1") for line in lines)  # the default

    config_text = output.read_text()
    config = yaml.safe_load(config_text)
    assert "REPLACE_ME" not in config_text
    validate_config(prepare_config(copy.deepcopy(config)))
    assert "# - Checkpoints are signed" in config_text and config_text.startswith("# Written from cluster.yaml by ")
    assert config["provider"]["region"] == "us-east-1" and config["cluster_name"] == name
    assert config["provider"]["availability_zone"].startswith("us-east-1a,us-east-1b")
    head = config["available_node_types"]["ray.head.default"]["node_config"]
    worker = config["available_node_types"]["ray.worker.default"]["node_config"]

    # The group: all traffic from itself, SSH from the range; nothing else.
    group_id = head["SecurityGroupIds"][0]
    assert worker["SecurityGroupIds"] == [group_id]
    rules = ingress(group_id, "us-east-1")
    assert len(rules) == 2, rules
    everything = next(r for r in rules if r["IpProtocol"] == "-1")
    assert [g["GroupId"] for g in everything["UserIdGroupPairs"]] == [group_id] and "IpRanges" not in everything
    ssh = next(r for r in rules if r["IpProtocol"] == "tcp")
    assert (ssh["FromPort"], ssh["ToPort"], [r["CidrIp"] for r in ssh["IpRanges"]]) == (22, 22, [CIDR])

    # The profiles: the workers' S3 on the bucket only; the head's that and the autoscaler's EC2.
    bucket = "raystream-123456789012-us-east-1"
    assert f"RAYSTREAM_CHECKPOINT_STORAGE=s3://{bucket}/raystream" in " ".join(config["head_start_ray_commands"])
    iam = boto("iam", "us-east-1")
    for node_config, kind in ((head, "head"), (worker, "worker")):
        profile = iam.get_instance_profile(InstanceProfileName=f"raystream-{name}-{kind}")["InstanceProfile"]
        assert node_config["IamInstanceProfile"]["Arn"] == profile["Arn"]
        assert [r["RoleName"] for r in profile["Roles"]] == [f"raystream-{name}-{kind}"]
        trust = profile["Roles"][0]["AssumeRolePolicyDocument"]
        assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    worker_policies = inline_policies(f"raystream-{name}-worker")
    assert list(worker_policies) == ["raystream-checkpoints"]
    statements = worker_policies["raystream-checkpoints"]["Statement"]
    assert {s["Resource"] for s in statements} == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert {a for s in statements for a in s["Action"]} == {
        "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
        "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
    head_policies = inline_policies(f"raystream-{name}-head")
    assert head_policies["raystream-checkpoints"] == worker_policies["raystream-checkpoints"]
    autoscaler = head_policies["raystream-autoscaler"]["Statement"]
    passed = [s for s in autoscaler if "iam:PassRole" in json.dumps(s["Action"])]
    worker_role = iam.get_role(RoleName=f"raystream-{name}-worker")["Role"]["Arn"]
    assert [s["Resource"] for s in passed] == [worker_role]
    assert not [s for s in autoscaler if "s3:" in json.dumps(s) or "iam:" in json.dumps(s) and s not in passed]

    # The bucket: public access blocked.
    block = boto("s3", "us-east-1").get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4

    for secret in (SECRETS["AWS_ACCESS_KEY_ID"], SECRETS["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in "\n".join(lines) and secret not in config_text


def test_running_init_again_reuses_everything(aws, tmp_path):
    name, bucket = unique("again"), unique("raystream-test")
    args = ("--region", "us-west-2", "--ssh-cidr", "198.51.100.7", "--cluster-name", name, "--bucket", bucket)
    status, first, output = init(tmp_path, *args)
    assert status == 0, first
    written = output.read_text()
    status, second, _ = init(tmp_path, *args)
    assert status == 0, second
    assert [line.split()[0] for line in second] == ["reused"] * 6 + ["wrote"], second
    assert output.read_text() == written
    group_id = yaml.safe_load(written)["available_node_types"]["ray.head.default"]["node_config"]["SecurityGroupIds"][0]
    assert len(ingress(group_id, "us-west-2")) == 2
    ssh = next(r for r in ingress(group_id, "us-west-2") if r["IpProtocol"] == "tcp")
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == ["198.51.100.7/32"]  # a bare address is its /32
    assert boto("s3", "us-west-2").get_bucket_location(Bucket=bucket)["LocationConstraint"] == "us-west-2"

    # Another range later: the group gains it and keeps the first.
    status, third, _ = init(tmp_path, *args[:3], "192.0.2.0/28", *args[4:])
    assert status == 0 and third[0].endswith("added SSH from 192.0.2.0/28"), third
    ssh = next(r for r in ingress(group_id, "us-west-2") if r["IpProtocol"] == "tcp")
    assert sorted(r["CidrIp"] for r in ssh["IpRanges"]) == ["192.0.2.0/28", "198.51.100.7/32"]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.1.2.3/0"])
def test_ssh_open_to_the_world_is_refused_in_one_line_before_anything_is_made(tmp_path, cidr):
    status, lines, output = init(tmp_path, "--ssh-cidr", cidr)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: --ssh-cidr {cidr} is refused: the nodes admit only the cluster and your range")
    assert "Prometheus endpoints answer without a token" in lines[0]
    assert not output.exists()


def test_without_ssh_cidr_it_says_how_to_find_ones_range(tmp_path):
    status, lines, _ = init(tmp_path, "--region", "us-east-1")
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: --ssh-cidr is needed") and "checkip.amazonaws.com" in lines[0]


def test_missing_credentials_are_one_line(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    status, lines, output = init(tmp_path, "--ssh-cidr", CIDR)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: asking AWS who these credentials are (sts get-caller-identity): no usable "
                               "AWS credentials (NoCredentialsError)")
    assert not output.exists()


def test_a_reused_group_that_admits_the_world_is_refused(aws, tmp_path):
    name = unique("open")
    ec2 = boto("ec2", "eu-west-1")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=f"raystream-{name}", Description="by hand", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    status, lines, output = init(tmp_path, "--region", "eu-west-1", "--ssh-cidr", CIDR, "--cluster-name", name)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0] == (f"error: security group raystream-{name} ({group}) admits 0.0.0.0/0 or ::/0: remove that rule "
                        f"(aws ec2 revoke-security-group-ingress) and run init again")
    assert not output.exists()


@pytest.mark.parametrize(("code", "expected"), [
    ("UnauthorizedOperation", ("making x: access denied to CreateSecurityGroup (UnauthorizedOperation); the "
                               "credentials init runs with need EC2, IAM and S3 rights to make these resources")),
    ("ExpiredToken", ("making x: AWS refused the credentials (ExpiredToken); renew them (`aws sso login`, "
                      "`aws configure`)")),
    ("InvalidParameterValue", "making x: CreateSecurityGroup failed: InvalidParameterValue: bad value"),
])
def test_aws_errors_become_one_line(code, expected):
    from botocore.exceptions import ClientError

    with pytest.raises(CloudSetupError) as raised, aws_resources.aws_errors("making x"):
        raise ClientError({"Error": {"Code": code, "Message": "bad\nvalue"}}, "CreateSecurityGroup")
    assert str(raised.value) == expected


def test_the_written_config_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", "cluster.local.yaml"], cwd=ROOT, check=False).returncode == 0


def test_a_template_init_cannot_fill_is_refused_before_aws_is_asked(tmp_path):
    template = tmp_path / "cluster.yaml"
    template.write_text(TEMPLATE.read_text().replace("ulimit -n 65536; RAY_AUTH_MODE=token ray start",
                                                     "ulimit -n 65536; X=REPLACE_ME ray start"))
    result = CliRunner().invoke(main, ["cluster", "init", "--template", str(template), "--output",
                                       str(tmp_path / "out.yaml"), "--ssh-cidr", CIDR])
    assert result.exit_code == 1
    assert result.stdout.startswith("error: cannot fill the template: a REPLACE_ME init does not know is left (line ")
