"""What `raystream submit` uploads from the job file's folder (raystream/_runtime/control/upload.py):
never secret-looking files, nothing the repository's .gitignore files ignore, never the home
directory; and Ray, given the excludes, packs exactly the files listed."""
from __future__ import annotations

import importlib
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from raystream.errors import ConfigError

JOB = "job = None\n"  # all `raystream submit` checks here: a module-level `job`


def plan_upload(jobfile: str):
    # Imported per call, so that each test fails on its own where the module is missing.
    return importlib.import_module("raystream._runtime.control.upload").plan_upload(jobfile)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A home directory of the test's own, and Ray's packing in its default configuration."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES",
                     "GOOGLE_APPLICATION_CREDENTIALS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)


def make(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SECRETS_TREE = {
    "job.py": JOB, "helper.py": "x = 1\n", "data/in.csv": "a,b\n", "README.md": "hi\n", "tls/ca.crt": "public\n",
    "conf/settings.yaml": "a: 1\n", "notes ": "a name ending in a blank\n", "odd [1]*?.txt": "kept\n",
    ".env": "K=v\n", ".env.local": "K=v\n", "prod.env": "K=v\n", ".envrc": "export K=v\n", ".pgpass": "h:5432:*:u:p\n",
    ".netrc": "machine m\n", ".npmrc": "//r/:_authToken=t\n", ".pypirc": "[pypi]\n", "deploy.pem": "-----\n",
    "tls/server.key": "-----\n", "keys/ID_RSA": "-----\n", "keys/id_ed25519.pub": "ssh-ed25519\n",
    "odd [2].pem": "-----\n", ".aws/credentials": "[default]\n", ".ssh/config": "Host *\n",
    ".ray/auth_token": "t\n", ".raystream/checkpoint_key": "k\n", ".kube/config": "c\n",
    ".docker/config.json": "{}\n", "credentials.json": "{}\n", "sa/service-account-prod.json": "{}\n",
    "vault.kdbx": "v\n", "store.jks": "j\n", "cert.p12": "p\n", "terraform.tfstate": "{}\n",
    ".bash_history": "psql -W\n", ".config/gcloud/application_default_credentials.json": "{}\n",
    "conf/gcp.json": "{}\n",  # named by GOOGLE_APPLICATION_CREDENTIALS
    ".hg/store": "h\n", ".venv/bin/python": "", "__pycache__/helper.cpython-311.pyc": "",
}
SECRETS_KEPT = {"job.py", "helper.py", "data/in.csv", "README.md", "tls/ca.crt", "conf/settings.yaml", "notes ",
                "odd [1]*?.txt", "link_in"}
SECRETS_LEFT_OUT = {
    **{rel: "secret-looking" for rel in (
        ".env", ".env.local", "prod.env", ".envrc", ".pgpass", ".netrc", ".npmrc", ".pypirc", "deploy.pem",
        "tls/server.key", "keys/ID_RSA", "keys/id_ed25519.pub", "odd [2].pem", ".aws/", ".ssh/", ".ray/",
        ".raystream/", ".kube/", ".docker/", "credentials.json", "sa/service-account-prod.json", "vault.kdbx",
        "store.jks", "cert.p12", "terraform.tfstate", ".bash_history", ".config/gcloud/", "conf/gcp.json",
        ".hg/")},
    ".venv/": "Ray's default excludes", "__pycache__/": "Ray's default excludes",
    # Ray would follow these: out of the folder, into a file left out, into a folder
    "link_out": "symlink", "link_to_env": "symlink", "link_dir": "symlink",
}


@pytest.fixture
def secrets_tree(tmp_path, monkeypatch) -> Path:
    folder = make(tmp_path / "proj", SECRETS_TREE)
    (tmp_path / "outside.txt").write_text("not in the folder\n")
    os.symlink(tmp_path / "outside.txt", folder / "link_out")
    os.symlink("helper.py", folder / "link_in")
    os.symlink(".env", folder / "link_to_env")
    os.symlink("data", folder / "link_dir")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(folder / "conf" / "gcp.json"))
    return folder


GIT_TREE = {
    ".git/HEAD": "ref: refs/heads/main\n", ".git/info/exclude": "*.swp\n",
    ".gitignore": "*.log\n/build/\nscratch/\n",
    "jobs/.gitignore": "*.tmp\n!keep.tmp\n",  # between the repository's root and the job folder
    "jobs/etl/job.py": JOB, "jobs/etl/helper.py": "x = 1\n", "jobs/etl/keep.tmp": "kept by !keep.tmp\n",
    "jobs/etl/x.tmp": "", "jobs/etl/run.log": "", "jobs/etl/notes.swp": "", "jobs/etl/scratch/a.py": "",
    "jobs/etl/build/out.bin": "kept: /build/ is the root's build\n", "jobs/etl/.env": "K=v\n",
    "jobs/etl/.gitignore": "*.bak\n", "jobs/etl/old.bak": "",
    "jobs/etl/sub/.gitignore": "local.yaml\n!important.log\n", "jobs/etl/sub/local.yaml": "",
    "jobs/etl/sub/important.log": "kept by the deeper !important.log\n", "jobs/etl/sub/model.py": "",
    # git would keep sub2/keep.bak (the deeper negation wins) but Ray drops it: it applies
    # each ignore file on its own. Left out, and said so.
    "jobs/etl/sub2/.gitignore": "!keep.bak\n", "jobs/etl/sub2/keep.bak": "", "jobs/etl/sub2/data.txt": "",
    "jobs/etl/.rayignore": "big/\n", "jobs/etl/big/blob.bin": "", "jobs/etl/big/more/b.bin": "",
    # A repository of its own inside: the outer rules (*.log) stop there, its own apply.
    "jobs/etl/vendor/lib/.git/HEAD": "", "jobs/etl/vendor/lib/.gitignore": "*.o\n", "jobs/etl/vendor/lib/x.o": "",
    "jobs/etl/vendor/lib/x.c": "", "jobs/etl/vendor/lib/run.log": "",
}
GIT_KEPT = {"job.py", "helper.py", "keep.tmp", "build/out.bin", ".gitignore", "sub/.gitignore", "sub/important.log",
            "sub/model.py", "sub2/.gitignore", "sub2/data.txt", ".rayignore", "vendor/lib/.gitignore",
            "vendor/lib/x.c", "vendor/lib/run.log"}
GIT_LEFT_OUT = {"x.tmp": ".gitignore", "run.log": ".gitignore", "notes.swp": ".gitignore", "scratch/": ".gitignore",
                "old.bak": ".gitignore", "sub/local.yaml": ".gitignore", "sub2/keep.bak": ".gitignore",
                "big/": ".rayignore", "vendor/lib/.git/": "secret-looking", "vendor/lib/x.o": ".gitignore",
                ".env": "secret-looking"}


@pytest.fixture
def git_tree(tmp_path) -> Path:
    return make(tmp_path / "repo", GIT_TREE) / "jobs" / "etl"


def listed(plan) -> tuple[set[str], dict[str, str]]:
    return {f.path for f in plan.files}, {e.path: e.reason for e in plan.left_out}


def test_secret_looking_files_are_left_out(secrets_tree):
    kept, left_out = listed(plan_upload(str(secrets_tree / "job.py")))
    assert kept == SECRETS_KEPT
    assert left_out == SECRETS_LEFT_OUT


def test_the_repository_gitignore_files_are_honoured(git_tree):
    kept, left_out = listed(plan_upload(str(git_tree / "job.py")))
    assert kept == GIT_KEPT
    assert left_out == GIT_LEFT_OUT


@pytest.mark.parametrize("tree", ["secrets_tree", "git_tree"])
def test_ray_packs_exactly_the_files_listed(request, tmp_path, tree):
    """Packed by Ray's own code, as JobSubmissionClient.submit_job packs a working_dir."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    folder = request.getfixturevalue(tree)
    plan = plan_upload(str(folder / "job.py"))
    package = tmp_path / "package.zip"

    def pack(working_dir, excludes, is_file=False):
        create_package(working_dir, package, include_gitignore=True, excludes=excludes)

    upload_working_dir_if_needed(plan.runtime_env(), include_gitignore=True, upload_fn=pack)
    with zipfile.ZipFile(package) as z:
        packed = {name for name in z.namelist() if not name.endswith("/")}
    assert packed == {f.path for f in plan.files}
    assert sum(f.size for f in plan.files) == plan.total_size > 0


class FakeJobs:
    """The Jobs API client: records what would be submitted."""

    def __init__(self):
        self.submitted: list[dict] = []

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return "raysubmit_test"


def fake_cluster():
    from raystream._runtime.control.submission import Cluster

    cluster = Cluster.__new__(Cluster)  # no connection
    cluster.address, cluster.client = "http://head:8265", FakeJobs()
    return cluster


def test_submit_tells_ray_to_leave_out_what_is_not_listed(secrets_tree):
    cluster = fake_cluster()
    assert cluster.submit(str(secrets_tree / "job.py"), []) == "raysubmit_test"
    [submitted] = cluster.client.submitted
    env = submitted["runtime_env"]
    assert env["working_dir"] == str(secrets_tree)
    assert {"/.env", "/.aws", "/tls/server.key", "/odd \\[2\\].pem", "/link_out"} <= set(env["excludes"])
    assert len(env["excludes"]) == len(SECRETS_LEFT_OUT)


@pytest.mark.parametrize("where, message", [
    ("home", "is your home directory"),
    (".", "contains your home directory"),
])
def test_the_home_directory_is_refused(tmp_path, where, message):
    folder = make(tmp_path / where, {"job.py": JOB, ".aws/credentials": "[default]\n"})
    cluster = fake_cluster()
    with pytest.raises(ConfigError, match=f"{message}.*move the job file .* into a folder of its own"):
        cluster.submit(str(folder / "job.py"), [])
    assert cluster.client.submitted == []
    # A folder of its own inside the home directory is fine.
    project = make(tmp_path / "home" / "project", {"job.py": JOB})
    assert cluster.submit(str(project / "job.py"), []) == "raysubmit_test"


def test_the_home_directory_is_refused_by_expanduser(tmp_path, monkeypatch):
    folder = make(tmp_path / "elsewhere", {"job.py": JOB})
    monkeypatch.setattr(os.path, "expanduser", lambda p: str(folder) if p == "~" else p)
    with pytest.raises(ConfigError, match="is your home directory"):
        plan_upload(str(folder / "job.py"))


@pytest.mark.parametrize("jobfile, files, message", [
    ("job.py", {".git/HEAD": "", ".gitignore": "job.py\n"}, r"leave the job file .*job.py out \(.gitignore\)"),
    ("credentials_job.py", {}, r"leave the job file .*credentials_job.py out \(secret-looking\)"),
    ("scratch/job.py", {".git/HEAD": "", ".gitignore": "scratch/\n"},
     "folder .*scratch is ignored by the .gitignore files of the git repository"),
    # Checked with Ray: it packs nothing at all from such a folder.
    ("job.py", {".gitignore": ".*\n!.gitignore\n"}, "Ray would upload nothing .* its .gitignore matches the folder"),
])
def test_a_job_file_that_would_not_travel_is_refused(tmp_path, jobfile, files, message):
    root = make(tmp_path / "repo", {**files, jobfile: JOB})
    cluster = fake_cluster()
    with pytest.raises(ConfigError, match=message):
        cluster.submit(str(root / jobfile), [])
    assert cluster.client.submitted == []


def cli(*args: str):
    from raystream.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_dry_run_prints_the_upload_and_submits_nothing(tmp_path, monkeypatch):
    import raystream.cli.cluster as commands

    monkeypatch.setattr(commands, "_cluster", lambda address: pytest.fail("a dry run connected to a cluster"))
    folder = make(tmp_path / "repo", {".git/HEAD": "", ".gitignore": "build/\n", "job.py": JOB,
                                      "data/in.csv": "x" * 2048, ".env": "K=v\n", "build/out.bin": "b"})
    result = cli("submit", "--dry-run", str(folder / "job.py"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"would upload from {folder}:",
        "  .gitignore      0.0 KiB",
        "  data/in.csv     2.0 KiB",
        "  job.py          0.0 KiB",
        "3 files, 2.0 KiB",
        "3 left out: 2 secret-looking, 1 .gitignore",
        "  .env    secret-looking",
        "  .git/   secret-looking",
        "  build/  .gitignore",
    ]


def test_dry_run_warns_of_a_large_upload(tmp_path, monkeypatch):
    from raystream._runtime.control import upload

    monkeypatch.setattr(upload, "GCS_STORAGE_MAX_SIZE", 4096)
    folder = make(tmp_path / "proj", {"job.py": JOB, "big.csv": "x" * 3000})
    result = cli("submit", "--dry-run", str(folder / "job.py"))
    assert result.exit_code == 0, result.output
    assert ("warning: the upload is 2.9 KiB before compression; Ray refuses a working_dir whose zip is 4.0 KiB "
            "or more") in result.output


def test_submit_prints_a_summary_of_the_upload(tmp_path, monkeypatch):
    import raystream.cli.cluster as commands

    cluster = fake_cluster()
    monkeypatch.setattr(commands, "_cluster", lambda address: cluster)
    folder = make(tmp_path / "proj", {"job.py": JOB, "data/in.csv": "x" * 2048, ".pgpass": "p\n"})
    result = cli("submit", "--no-follow", str(folder / "job.py"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"uploading 2 files, 2.0 KiB from {folder}; 1 left out: 1 secret-looking",
        "submitted raysubmit_test",
    ]
    [submitted] = cluster.client.submitted
    assert submitted["runtime_env"] == {"working_dir": str(folder), "excludes": ["/.pgpass"]}


def test_more_credential_files_by_name_are_left_out_and_code_files_named_like_them_are_not(tmp_path):
    """Review of issue 22: credential files the first list missed."""
    secrets = [".databrickscfg", ".passwd-s3fs", ".terraformrc", "app-secrets.yaml", "client.ovpn", "deploy_key",
               "kubeconfig", "rclone.conf", "secret.yaml", "ssh_host_ed25519_key", "token.json"]
    code = ["tokenizer.py", "keys.py", "monkey.py"]
    folder = make(tmp_path / "proj", {"job.py": JOB, **{name: "x" for name in secrets + code}})
    plan = plan_upload(str(folder / "job.py"))
    assert sorted(f.path for f in plan.files) == sorted(["job.py", *code])
    assert sorted(o.path for o in plan.left_out) == sorted(secrets)
