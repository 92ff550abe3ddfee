"""`raystream cluster init`: the AWS resources cluster.yaml names, made once, and a copy of
cluster.yaml that names them, ready for `ray up`.

What it makes, in one region (each found by name and reused when it exists already):

- a security group in the VPC (the region's default VPC unless one is given) that lets in
  all traffic from the group itself and TCP 22 from the operator's address range only:
  Ray 2.60's Prometheus endpoints answer without a token on every interface of every
  node, so nothing but the cluster may reach the nodes;
- two IAM roles with instance profiles (see `head_policy`): the workers' may use the
  checkpoint bucket only; the head's may also launch, tag and stop the cluster's workers
  and hand them the workers' role, as Ray's autoscaler on the head does;
- the checkpoint bucket, public access blocked.

Credentials come from boto3's usual chain (environment, ~/.aws, SSO, instance metadata);
none is printed or written. boto3 and Ray's autoscaler load only when the command runs.
"""
from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from raystream.cli.aws import (AUTOSCALER_POLICY_NAME, S3_POLICY_NAME, aws_errors, availability_zones,
                               check_bucket_name, check_cluster_name, check_ssh_cidr, default_bucket, ensure_bucket,
                               ensure_instance_profile, ensure_role, ensure_security_group, find_vpc, head_policy,
                               s3_policy)
from raystream.errors import CloudSetupError

logger = logging.getLogger(__name__)

#: Seconds a new instance profile takes to reach EC2 (Ray's own bootstrap waits 15 s too);
#: `ray up` right after init would otherwise be told the profile is invalid.
PROFILE_PROPAGATION_S = 15.0


@dataclass(frozen=True)
class InitRequest:
    """What the operator asked for. `bucket` None: `raystream-<account id>-<region>`;
    `vpc_id` None: the region's default VPC."""

    region: str
    ssh_cidr: str
    cluster_name: str
    bucket: str | None = None
    vpc_id: str | None = None


@dataclass(frozen=True)
class ClusterResources:
    """What the written config names."""

    cluster_name: str
    region: str
    availability_zones: tuple[str, ...]
    security_group_id: str
    head_profile_arn: str
    worker_profile_arn: str
    bucket: str


# --- the config -----------------------------------------------------------------------


def make_request(template: Path, *, region: str | None, ssh_cidr: str | None, bucket: str | None = None,
                 vpc_id: str | None = None, cluster_name: str | None = None) -> InitRequest:
    """The operator's options, checked, with the template's region and cluster name for
    those not given. Nothing here calls AWS."""
    cidr = check_ssh_cidr(ssh_cidr)
    if not template.is_file():
        raise CloudSetupError(f"no {template} here: run init in the raystream checkout (which `ray up` syncs to "
                              f"the nodes) or pass --template")
    config = yaml.safe_load(template.read_text())
    if not isinstance(config, dict) or not config.get("cluster_name"):
        raise CloudSetupError(f"{template} has no cluster_name: is it a Ray cluster config?")
    region = region or (config.get("provider") or {}).get("region") or "us-east-1"
    return InitRequest(region=region, ssh_cidr=cidr, cluster_name=check_cluster_name(cluster_name or
                       str(config["cluster_name"])), bucket=check_bucket_name(bucket) if bucket else None,
                       vpc_id=vpc_id)


def fill_config(text: str, resources: ClusterResources) -> str:
    """cluster.yaml with the values init made, its comments and layout kept: the
    cluster's name, region and zones, each node type's `SecurityGroupIds: [...]` and
    instance profile `Arn:` (the head's to the head node type, the workers' to the
    others), and the bucket of `RAYSTREAM_CHECKPOINT_STORAGE=s3://...`. Whatever stood
    there (REPLACE_ME, or earlier values) is replaced; the result is checked by parsing it."""
    config = yaml.safe_load(text)
    head_type = config.get("head_node_type")
    section, node_type, out = None, None, []
    for line in text.splitlines(keepends=True):
        if re.match(r"[A-Za-z_]", line):  # a top-level key
            section, node_type = line.split(":", 1)[0], None
        elif section == "available_node_types" and (m := re.match(r"  ([^\s#:][^:#]*):\s*(#.*)?$", line)):
            node_type = m.group(1).strip()
        if section == "cluster_name":
            line = re.sub(r"^(cluster_name:\s*)[^\s#]+", lambda m: m.group(1) + resources.cluster_name, line)
        elif section == "provider":
            line = re.sub(r"^(\s+region:\s*)[^\s#]+", lambda m: m.group(1) + resources.region, line)
            line = re.sub(r"^(\s+availability_zone:\s*)[^\s#]+",
                          lambda m: m.group(1) + ",".join(resources.availability_zones), line)
        elif node_type is not None:
            arn = resources.head_profile_arn if node_type == head_type else resources.worker_profile_arn
            line = re.sub(r"^(\s+SecurityGroupIds:\s*)\[[^\]]*\]",
                          lambda m: m.group(1) + f"[{resources.security_group_id}]", line)
            line = re.sub(r"^(\s+Arn:\s*)[^\s#]+", lambda m, arn=arn: m.group(1) + arn, line)
        line = re.sub(r"(RAYSTREAM_CHECKPOINT_STORAGE=s3://)[^/\s]+", lambda m: m.group(1) + resources.bucket, line)
        out.append(line)
    filled = "".join(out)
    _check_filled(filled, resources)
    return filled


def _check_filled(text: str, resources: ClusterResources) -> None:
    """The filled config says what init meant it to, or init stops before writing it."""
    config = yaml.safe_load(text)
    problems = []
    left = [i for i, ln in enumerate(text.splitlines(), 1) if "REPLACE_ME" in re.sub(r"(^|\s)#.*", "", ln)]
    if left:
        problems.append(f"a REPLACE_ME init does not know is left (line {left[0]})")
    provider = config.get("provider", {})
    if provider.get("region") != resources.region:
        problems.append("provider.region is not on a line of its own")
    if provider.get("availability_zone") != ",".join(resources.availability_zones):
        problems.append("provider.availability_zone is not on a line of its own")
    head_type = config.get("head_node_type")
    for name, node_type in config.get("available_node_types", {}).items():
        node_config = node_type.get("node_config", {})
        arn = resources.head_profile_arn if name == head_type else resources.worker_profile_arn
        if node_config.get("SecurityGroupIds") != [resources.security_group_id]:
            problems.append(f"{name}: SecurityGroupIds is not written `SecurityGroupIds: [...]`")
        if node_config.get("IamInstanceProfile", {}).get("Arn") != arn:
            problems.append(f"{name}: no `IamInstanceProfile: {{Arn: ...}}` with the Arn on a line of its own")
    if f"RAYSTREAM_CHECKPOINT_STORAGE=s3://{resources.bucket}/" not in " ".join(config.get("head_start_ray_commands", [])):
        problems.append("head_start_ray_commands sets no RAYSTREAM_CHECKPOINT_STORAGE=s3://BUCKET/...")
    if problems:
        raise CloudSetupError("cannot fill the template: " + "; ".join(problems))


def validate_with_ray(text: str) -> None:
    """Ray's own schema check of a cluster config, after Ray fills in its defaults, as
    `ray up` does; and a default AMI for the region unless every node type names one."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(text)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # noqa: BLE001 (jsonschema's, or Ray's own ValueError)
        raise CloudSetupError(f"the config fails Ray's validator: {' '.join(str(exc).split())[:300]}") from None
    region = config["provider"]["region"]
    if region not in DEFAULT_AMI and not all(t.get("node_config", {}).get("ImageId")
                                             for t in config["available_node_types"].values()):
        raise CloudSetupError(f"Ray has no default image for {region} (it has for {', '.join(sorted(DEFAULT_AMI))}): "
                              f"add `ImageId: ami-...` to each node_config of the template")


def header(request: InitRequest, template: str) -> str:
    """The comment that opens the written config: what wrote it and how to write it again."""
    again = f"raystream cluster init --region {request.region} --ssh-cidr {request.ssh_cidr}"
    again += f" --cluster-name {request.cluster_name}" + (f" --bucket {request.bucket}" if request.bucket else "")
    again += f" --vpc-id {request.vpc_id}" if request.vpc_id else ""
    return (f"# Written from {template} by `{again}`.\n"
            f"# It names this account's resources: git ignores it; edit {template} and run init again.\n")


# --- the whole ------------------------------------------------------------------------


def init_cluster(request: InitRequest, template: Path, output: Path, report: Callable[[str], None],
                 propagation_wait_s: float = PROFILE_PROPAGATION_S) -> ClusterResources:
    """Make (or find) the group, the roles and profiles and the bucket; write `output`,
    `template` filled in with them. `report` gets one line per resource. The template is
    checked before anything is made in AWS."""
    check_cluster_name(request.cluster_name)
    if request.bucket:
        check_bucket_name(request.bucket)
    text = template.read_text()
    placeholder = ClusterResources(request.cluster_name, request.region, (f"{request.region}a",), "sg-0",
                                   "arn:aws:iam::0:instance-profile/head", "arn:aws:iam::0:instance-profile/worker",
                                   request.bucket or "raystream-bucket")
    validate_with_ray(fill_config(text, placeholder))

    import boto3

    session = boto3.Session(region_name=request.region)
    with aws_errors("asking AWS who these credentials are (sts get-caller-identity)"):
        identity = session.client("sts").get_caller_identity()
    account, partition = identity["Account"], identity["Arn"].split(":")[1]
    ec2, iam, s3 = session.client("ec2"), session.client("iam"), session.client("s3")

    vpc_id = find_vpc(ec2, request.vpc_id)
    internal_ips = bool((yaml.safe_load(text).get("provider") or {}).get("use_internal_ips"))
    zones = availability_zones(ec2, vpc_id, public_only=not internal_ips)
    name = f"raystream-{request.cluster_name}"
    group_id, outcome = ensure_security_group(ec2, vpc_id, name, request.ssh_cidr, request.cluster_name)
    report(outcome.line())

    bucket = check_bucket_name(request.bucket or default_bucket(account, request.region))
    report(ensure_bucket(s3, bucket, request.region, request.cluster_name).line())

    # Two profiles, not one: the workers' may use the bucket only; the head's may also
    # launch and stop this cluster's workers and hand them the workers' role.
    checkpoints = {S3_POLICY_NAME: s3_policy(bucket, partition)}
    worker_role, outcome = ensure_role(iam, f"{name}-worker", checkpoints, request.cluster_name)
    report(outcome.line())
    worker_profile, worker_outcome = ensure_instance_profile(iam, f"{name}-worker", f"{name}-worker")
    report(worker_outcome.line())
    autoscaler = head_policy(request.region, account, request.cluster_name, worker_role, partition)
    _, outcome = ensure_role(iam, f"{name}-head", {**checkpoints, AUTOSCALER_POLICY_NAME: autoscaler},
                             request.cluster_name)
    report(outcome.line())
    head_profile, head_outcome = ensure_instance_profile(iam, f"{name}-head", f"{name}-head")
    report(head_outcome.line())

    resources = ClusterResources(request.cluster_name, request.region, zones, group_id, head_profile,
                                 worker_profile, bucket)
    filled = fill_config(text, resources)
    validate_with_ray(filled)
    output.write_text(header(request, template.name) + filled)
    if (worker_outcome.made or head_outcome.made) and propagation_wait_s > 0:
        report(f"waiting {propagation_wait_s:.0f}s for the new instance profiles to reach EC2")
        time.sleep(propagation_wait_s)  # no API says when EC2 sees a new profile: Ray's bootstrap waits too
    report(f"wrote  {output} (zones {','.join(zones)}); next: ray up {output}")
    return resources
