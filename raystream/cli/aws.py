"""The AWS resources a raystream cluster needs, each found by name and reused when it
exists, or made: the cluster's security group, IAM roles and instance profiles, and the
checkpoint bucket (`raystream cluster init`, in `raystream.cli.cluster_init`, puts them
together). AWS errors become one line each (`aws_errors`); credentials come from boto3's
usual chain and are never printed or written.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from raystream.errors import CloudSetupError

logger = logging.getLogger(__name__)

#: The tag every resource init makes carries, its value the cluster's name.
TAG_KEY = "raystream-cluster"
#: Ray tags each node it launches with the cluster's name under this key
#: (ray.autoscaler.tags.TAG_RAY_CLUSTER_NAME); the head's policy stops only such nodes.
RAY_CLUSTER_TAG = "ray-cluster-name"
#: How an operator finds the range to pass.
FIND_YOUR_RANGE = "`curl https://checkip.amazonaws.com` prints your address: pass ADDRESS/32"

_EC2_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
S3_POLICY_NAME = "raystream-checkpoints"
AUTOSCALER_POLICY_NAME = "raystream-autoscaler"


@dataclass(frozen=True)
class Outcome:
    """One resource, made or reused, as one printed line."""

    made: bool
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{'made' if self.made else 'reused':6s} {self.what}" + (f": {self.detail}" if self.detail else "")


# --- checks that need no AWS ----------------------------------------------------------


def check_ssh_cidr(value: str | None) -> str:
    """The range that may SSH to the nodes, normalized (a bare address is a /32 or /128).
    Missing, malformed or the whole internet (any /0): refused, saying why."""
    if not value:
        raise CloudSetupError(f"--ssh-cidr is needed: the address range that alone may SSH to the nodes; "
                              f"{FIND_YOUR_RANGE}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise CloudSetupError(f"--ssh-cidr {value!r} is not an address range like 203.0.113.0/24; "
                              f"{FIND_YOUR_RANGE}") from None
    if network.prefixlen == 0:
        raise CloudSetupError(f"--ssh-cidr {value} is refused: the nodes admit only the cluster and your range, as "
                              f"Ray 2.60's Prometheus endpoints answer without a token on every interface; "
                              f"{FIND_YOUR_RANGE}")
    return str(network)


def check_cluster_name(name: str) -> str:
    """Names of the group, the roles and the profiles derive from it: letters, digits,
    `-` and `_`, at most 40 characters (IAM role names stop at 64)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", name):
        raise CloudSetupError(f"cluster name {name!r}: use letters, digits, '-' and '_', at most 40 characters")
    return name


def check_bucket_name(name: str) -> str:
    """S3's rules for a bucket name, the common ones: 3-63 lowercase letters, digits,
    dots and hyphens, starting and ending with a letter or digit."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name) or ".." in name:
        raise CloudSetupError(f"bucket name {name!r}: use 3-63 lowercase letters, digits, '.' and '-'")
    return name


def default_bucket(account: str, region: str) -> str:
    """`raystream-<account id>-<region>`: unique to the account and region."""
    return f"raystream-{account}-{region}"


# --- IAM policies ---------------------------------------------------------------------


def s3_policy(bucket: str, partition: str = "aws") -> dict[str, Any]:
    """Checkpoints on S3, in this bucket only: list it and its multipart uploads; read,
    write and delete objects; abort and list the parts of multipart uploads."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ListTheBucket", "Effect": "Allow",
         "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"], "Resource": arn},
        {"Sid": "ObjectsInTheBucket", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts"], "Resource": f"{arn}/*"},
    ]}


def head_policy(region: str, account: str, cluster_name: str, worker_role_arn: str,
                partition: str = "aws") -> dict[str, Any]:
    """What Ray's autoscaler on the head calls (ray/autoscaler/_private/aws/node_provider.py),
    in this region, and nothing of IAM but handing workers their role.

    Ray's own default head role (`ray-autoscaler-v1`, config.py `_configure_iam_role`) gets
    AmazonEC2FullAccess and AmazonS3FullAccess. The head needs far less: the node provider
    lists instances (DescribeInstances), launches workers (RunInstances, tagging them as
    they start), tags them as their state changes (CreateTags), and terminates them (or
    stops and restarts them with `cache_stopped_nodes: true`). It launches each worker
    with the workers' instance profile, so it may pass the workers' role (iam:PassRole),
    that role only. Instances are touched only when they carry Ray's tag with this
    cluster's name. Not granted: DescribeImages (Ray calls it only with a CloudWatch agent
    config) and anything of `ray up`'s bootstrap, which runs on the operator's machine.
    """
    instances = f"arn:{partition}:ec2:{region}:{account}:instance/*"
    this_cluster = {"StringEquals": {f"ec2:ResourceTag/{RAY_CLUSTER_TAG}": cluster_name}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ListNodes", "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
        {"Sid": "LaunchWorkers", "Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "TagWorkersAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": instances,
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "TagStopTerminateThisClustersNodes", "Effect": "Allow",
         "Action": ["ec2:CreateTags", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"],
         "Resource": instances, "Condition": this_cluster},
        {"Sid": "PassTheWorkersRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": worker_role_arn},
    ]}


# --- AWS errors as one line -----------------------------------------------------------

_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
           "AuthFailure", "Forbidden", "403"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch",
                    "InvalidAccessKeyId", "UnrecognizedClientException", "RequestExpired"}


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """An AWS error while doing `what` becomes a CloudSetupError of one line: no
    credentials, credentials refused, access denied (which call), or AWS's own message."""
    import botocore.exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError,
            bx.TokenRetrievalError, bx.SSOError) as exc:
        logger.info("%s failed", what, exc_info=True)
        raise CloudSetupError(f"{what}: no usable AWS credentials ({type(exc).__name__}); boto3 looks in "
                              f"AWS_PROFILE/AWS_ACCESS_KEY_ID, ~/.aws and SSO: run `aws configure` or "
                              f"`aws sso login`") from None
    except bx.ClientError as exc:
        logger.info("%s failed", what, exc_info=True)
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        message = " ".join(str(error.get("Message", "")).split())
        if code in _BAD_CREDENTIALS:
            raise CloudSetupError(f"{what}: AWS refused the credentials ({code}); renew them "
                                  f"(`aws sso login`, `aws configure`)") from None
        if code in _DENIED or code.endswith("AccessDenied"):
            raise CloudSetupError(f"{what}: access denied to {exc.operation_name} ({code}); the credentials "
                                  f"init runs with need EC2, IAM and S3 rights to make these resources") from None
        raise CloudSetupError(f"{what}: {exc.operation_name} failed: {code}: {message[:300]}") from None
    except bx.BotoCoreError as exc:  # cannot connect, bad region, ...
        logger.info("%s failed", what, exc_info=True)
        raise CloudSetupError(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# --- the resources --------------------------------------------------------------------


def find_vpc(ec2: Any, vpc_id: str | None) -> str:
    """The VPC the nodes run in: `vpc_id` (checked to exist) or the region's default VPC."""
    if vpc_id:
        with aws_errors(f"finding VPC {vpc_id}"):
            try:
                return ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["VpcId"]
            except ec2.exceptions.ClientError as exc:
                if _error_code(exc).startswith("InvalidVpcID"):
                    raise CloudSetupError(f"no VPC {vpc_id} in {ec2.meta.region_name}") from None
                raise
    with aws_errors("finding the default VPC"):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudSetupError(f"{ec2.meta.region_name} has no default VPC: pass --vpc-id (a VPC with public subnets)")
    return vpcs[0]["VpcId"]


def availability_zones(ec2: Any, vpc_id: str, public_only: bool = True) -> tuple[str, ...]:
    """The zones where Ray can place nodes in this VPC: those with an available subnet that
    gives instances public addresses (what `ray up` asks for unless the config sets
    `use_internal_ips`, when `public_only` is False)."""
    with aws_errors(f"listing the subnets of {vpc_id}"):
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    zones = sorted({s["AvailabilityZone"] for s in subnets
                    if s.get("State") == "available" and (s.get("MapPublicIpOnLaunch") or not public_only)})
    if not zones:
        raise CloudSetupError(f"{vpc_id} has no subnet that gives instances public addresses, which `ray up` "
                              f"needs to reach the nodes; choose another VPC (--vpc-id)")
    return tuple(zones)


def _admits_world(permission: dict[str, Any]) -> bool:
    return (any(r.get("CidrIp") == "0.0.0.0/0" for r in permission.get("IpRanges", []))
            or any(r.get("CidrIpv6") == "::/0" for r in permission.get("Ipv6Ranges", [])))


def _has_self_rule(permissions: list[dict[str, Any]], group_id: str) -> bool:
    return any(p.get("IpProtocol") == "-1" and any(g.get("GroupId") == group_id for g in p.get("UserIdGroupPairs", []))
               for p in permissions)


def _has_ssh_rule(permissions: list[dict[str, Any]], cidr: str) -> bool:
    key, field = ("Ipv6Ranges", "CidrIpv6") if ":" in cidr else ("IpRanges", "CidrIp")
    return any(p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22 and p.get("ToPort") == 22
               and any(r.get(field) == cidr for r in p.get(key, [])) for p in permissions)


def _ssh_permission(cidr: str) -> dict[str, Any]:
    description = "SSH from the operator's range"
    ranges = ({"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": description}]} if ":" in cidr
              else {"IpRanges": [{"CidrIp": cidr, "Description": description}]})
    return {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges}


def ensure_security_group(ec2: Any, vpc_id: str, name: str, cidr: str, cluster_name: str) -> tuple[str, Outcome]:
    """The group every node is in: all traffic from the group itself, TCP 22 from `cidr`.
    An existing group of that name in the VPC is reused and given whichever of the two
    rules it lacks; one that admits 0.0.0.0/0 or ::/0 is refused (init removes no rule)."""
    what = f"security group {name}"
    with aws_errors(f"finding {what}"):
        found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                      {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
    if found:
        group = found[0]
        group_id, permissions = group["GroupId"], group.get("IpPermissions", [])
        if any(_admits_world(p) for p in permissions):
            raise CloudSetupError(f"{what} ({group_id}) admits 0.0.0.0/0 or ::/0: remove that rule "
                                  f"(aws ec2 revoke-security-group-ingress) and run init again")
        made = False
    else:
        with aws_errors(f"making {what}"):
            group_id = ec2.create_security_group(
                GroupName=name, VpcId=vpc_id,
                Description=f"raystream cluster {cluster_name}: the cluster itself and SSH from one range",
                TagSpecifications=[{"ResourceType": "security-group",
                                    "Tags": [{"Key": TAG_KEY, "Value": cluster_name}]}])["GroupId"]
        permissions, made = [], True
    added = []
    with aws_errors(f"adding the rules of {what}"):
        if not _has_self_rule(permissions, group_id):
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "the cluster's nodes"}]}])
            added.append("all traffic from the group itself")
        if not _has_ssh_rule(permissions, cidr):
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[_ssh_permission(cidr)])
            added.append(f"SSH from {cidr}")
    label = f"{what} {group_id} in {vpc_id}"
    if made:
        return group_id, Outcome(True, label, " and ".join(added) + " only")
    return group_id, Outcome(False, label, ("added " + " and ".join(added)) if added else "")


def _found_or_made(iam: Any, find: Callable[[], Any], make: Callable[[], Any]) -> tuple[Any, bool]:
    """(what `find` returns, False), or (what `make` returns, True) when IAM has no such entity."""
    try:
        return find(), False
    except iam.exceptions.NoSuchEntityException:
        return make(), True


def ensure_role(iam: Any, name: str, policies: dict[str, dict[str, Any]], cluster_name: str) -> tuple[str, Outcome]:
    """An IAM role EC2 instances may assume, holding exactly these inline policies
    (those it has are rewritten when they differ). Returns its ARN."""
    what = f"IAM role {name}"
    with aws_errors(f"making {what}"):
        role, made = _found_or_made(
            iam, lambda: iam.get_role(RoleName=name)["Role"],
            lambda: iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(_EC2_TRUST),
                                    Description=f"raystream cluster {cluster_name}",
                                    Tags=[{"Key": TAG_KEY, "Value": cluster_name}])["Role"])
        changed = []
        for policy_name, document in policies.items():
            try:
                current = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
                if isinstance(current, str):
                    current = json.loads(current)
            except iam.exceptions.NoSuchEntityException:
                current = None
            if current != document:
                iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
                changed.append(policy_name)
    if made:
        return role["Arn"], Outcome(True, what, "policies " + ", ".join(policies))
    return role["Arn"], Outcome(False, what, ("updated policies " + ", ".join(changed)) if changed else "")


def ensure_instance_profile(iam: Any, name: str, role_name: str) -> tuple[str, Outcome]:
    """An instance profile of this name holding `role_name` (EC2 hands a role to an
    instance through a profile). A profile that holds another role is refused."""
    what = f"instance profile {name}"
    with aws_errors(f"making {what}"):
        profile, made = _found_or_made(
            iam, lambda: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"],
            lambda: iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"])
        roles = [r["RoleName"] for r in profile.get("Roles", [])]
        if roles and roles != [role_name]:
            raise CloudSetupError(f"{what} holds the role {roles[0]}, not {role_name}: remove it from the profile "
                                  f"or choose another --cluster-name")
        if not roles:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
            made = True  # new to EC2 either way: wait for it
    return profile["Arn"], Outcome(made, what, f"role {role_name}")


_BLOCK_ALL = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
              "RestrictPublicBuckets": True}


def ensure_bucket(s3: Any, name: str, region: str, cluster_name: str) -> Outcome:
    """The checkpoint bucket, made in `region` when missing (us-east-1 takes no
    LocationConstraint), public access blocked. A new bucket also gets owner-enforced
    object ownership and default encryption (SSE-S3); an existing one keeps its own
    settings but gets its public access blocked."""
    what = f"bucket {name}"
    with aws_errors(f"finding {what}"):
        try:
            s3.head_bucket(Bucket=name)
            exists = True
        except s3.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in ("403", "AccessDenied"):
                raise CloudSetupError(f"{what} exists and these credentials may not use it (another account's, "
                                      f"bucket names are global): choose another with --bucket") from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            exists = False
    if exists:
        with aws_errors(f"checking the public access block of {what}"):
            try:
                current = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
            except s3.exceptions.ClientError as exc:
                if _error_code(exc) != "NoSuchPublicAccessBlockConfiguration":
                    raise
                current = {}
            if all(current.get(k) for k in _BLOCK_ALL):
                return Outcome(False, what, "public access blocked")
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=_BLOCK_ALL)
        return Outcome(False, what, "blocked its public access")
    with aws_errors(f"making {what}"):
        location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=name, **location)
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=_BLOCK_ALL)
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={
            "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [{"Key": TAG_KEY, "Value": cluster_name}]})
    return Outcome(True, what, f"in {region}, public access blocked, encrypted (SSE-S3)")
