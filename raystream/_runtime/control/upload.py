"""What `raystream submit` uploads: the job file's folder, less what must not leave this
machine or would not reach the cluster anyway.

Ray ships a working_dir whole, reading only the .gitignore and .rayignore files inside
it. So the list is made here, and Ray is given an `excludes` entry for every path left
out; what is listed is then exactly what Ray packs. A path is left out when it

- looks like a secret (SECRET_PATTERNS, or a credentials file the environment names),
- is ignored by the .gitignore files of the git work tree the folder is in (the root's,
  those between the root and the folder, those inside it, and .git/info/exclude),
- is dropped by Ray itself (the folder's .gitignore/.rayignore files as Ray reads them,
  and Ray's default excludes: .git, .venv, venv, __pycache__), or
- is a symlink to a folder, or to a file outside the folder or left out: Ray would follow
  it and pack what it points to.

The home directory, or a folder that contains it, is refused outright.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from pathspec import GitIgnoreSpec
# Ray internals (pinned to 2.60.*; tests/unit/_runtime/control/test_upload.py packs with Ray to check).
from ray._private.ray_constants import RAY_RUNTIME_ENV_IGNORE_GITIGNORE, get_runtime_env_default_excludes
from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
from ray._private.thirdparty.pathspec import PathSpec

from raystream.errors import ConfigError

logger = logging.getLogger(__name__)

#: Paths that are never uploaded, in .gitignore syntax, matched without regard to case
#: against paths relative to the job folder (a folder matching a pattern is left out whole).
SECRET_PATTERNS: tuple[str, ...] = (
    # Environment files and tool settings that hold passwords or tokens
    ".env", ".env.*", "*.env", ".envrc", ".netrc", "_netrc", ".pgpass", ".my.cnf", ".pypirc", ".npmrc",
    ".yarnrc", ".yarnrc.yml", ".git-credentials", ".dockercfg", ".s3cfg", ".boto", ".vault-token", ".htpasswd",
    # Private keys, key stores, password databases
    "*.pem", "*.key", "*.p8", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.ppk", "*.keytab", "*.kdbx",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    # Credentials by name: cloud keys, OAuth clients, Ray's token, raystream's checkpoint key
    "credentials*", "*credentials*.json", "service-account*.json", "client_secret*.json", "secrets.*", ".secrets",
    "auth_token", "checkpoint_key", "*secret*", "*_key", "*_key.*", "deploy_key*", "ssh_host_*", "token.json",
    "*.token", "kubeconfig", "*.kubeconfig", "rclone.conf", "*.ovpn", ".passwd-s3fs", ".databrickscfg",
    ".terraformrc", "terraform.rc", ".boto3", ".kaggle", ".snowsql", ".dbt/profiles.yml",
    # Terraform state and variables keep secrets in plain text
    "*.tfstate", "*.tfstate.*", "*.tfvars",
    # Credential folders
    ".aws", ".ssh", ".gnupg", ".ray", ".raystream", ".kube", ".docker", ".azure", "**/.config/gcloud",
    # Version control: history keeps secrets once committed, its config can hold tokens in remote URLs
    ".git", ".hg", ".svn",
    # Shell and database client histories (typed passwords)
    ".*_history",
)

#: Environment variables that name credentials files: those files stay here whatever their name.
SECRET_FILE_VARIABLES: tuple[str, ...] = (
    "RAYSTREAM_CHECKPOINT_KEY_FILE", "RAY_AUTH_TOKEN_PATH", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "KUBECONFIG", "PGPASSFILE", "NETRC", "DOCKER_CONFIG",
)

# Why a path is left out, in the order they are told.
SECRET = "secret-looking"
GITIGNORE = ".gitignore"
RAYIGNORE = ".rayignore"
RAY_DEFAULT = "Ray's default excludes"
SYMLINK = "symlink"
REASONS = (SECRET, GITIGNORE, RAYIGNORE, RAY_DEFAULT, SYMLINK)

_SECRETS = GitIgnoreSpec.from_lines(SECRET_PATTERNS)


@dataclass(frozen=True)
class UploadFile:
    path: str  # relative to the job folder, "/"-separated
    size: int


@dataclass(frozen=True)
class LeftOut:
    path: str  # relative to the job folder; a folder (left out whole) ends with "/"
    reason: str  # one of REASONS


@dataclass(frozen=True)
class Upload:
    """What a submission uploads from `folder`, and what Ray is told to leave out."""

    folder: str
    files: tuple[UploadFile, ...]
    left_out: tuple[LeftOut, ...]
    excludes: tuple[str, ...]  # one anchored pattern per path left out, relative to folder
    size_limit: int  # Ray refuses a working_dir whose zip is this large

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def runtime_env(self) -> dict[str, Any]:
        return {"working_dir": self.folder, "excludes": list(self.excludes)}

    def left_out_text(self) -> str:
        """`3 left out: 2 secret-looking, 1 .gitignore`."""
        if not self.left_out:
            return "nothing left out"
        counts = Counter(entry.reason for entry in self.left_out)
        return f"{len(self.left_out)} left out: " + ", ".join(f"{counts[r]} {r}" for r in REASONS if counts[r])

    def summary(self) -> str:
        return (f"uploading {_files(len(self.files))}, {format_size(self.total_size)} from {self.folder}; "
                f"{self.left_out_text()}")

    def size_warning(self) -> str | None:
        # Ray's own warning comes at half its limit, once the zip is made; this is the size
        # before compression, so it may come when Ray's does not.
        if self.total_size < self.size_limit // 2:
            return None
        return (f"the upload is {format_size(self.total_size)} before compression; Ray refuses a working_dir "
                f"whose zip is {format_size(self.size_limit)} or more: keep large data in S3, or list it in "
                ".gitignore or .rayignore")

    def dry_run_lines(self) -> list[str]:
        """What `raystream submit --dry-run` prints."""
        width = max((len(f.path) for f in self.files), default=0)
        lines = [f"would upload from {self.folder}:"]
        lines += [f"  {f.path:<{width}}  {format_size(f.size):>10}" for f in self.files]
        lines.append(f"{_files(len(self.files))}, {format_size(self.total_size)}")
        lines.append(self.left_out_text())
        width = max((len(e.path) for e in self.left_out), default=0)
        lines += [f"  {e.path:<{width}}  {e.reason}" for e in self.left_out]
        warning = self.size_warning()
        return lines + ([f"warning: {warning}"] if warning else [])


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1024:.1f} KiB"


def _files(count: int) -> str:
    return f"{count} file" + ("" if count == 1 else "s")


def refuse_home(folder: str) -> None:
    """The home directory holds ~/.ssh, ~/.aws, ~/.ray/auth_token and the rest: never a working_dir."""
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(folder)
    if os.path.commonpath([real, home]) == real:
        what = "your home directory" if real == home else f"a folder that contains your home directory ({home})"
        raise ConfigError(f"the job file's folder {folder} is {what}, and raystream submit uploads the job file's "
                          "whole folder: move the job file (and what it reads) into a folder of its own and "
                          "submit it from there")


def plan_upload(jobfile: str) -> Upload:
    """The files a submission of `jobfile` uploads from its folder, and the excludes that
    make Ray upload exactly those. Raises ConfigError if the job file itself would not go."""
    folder = os.path.dirname(os.path.abspath(jobfile))
    refuse_home(folder)
    ray = _RayRules.load()
    walk = _Walk(folder, ray)
    walk.run()
    files = tuple(sorted(walk.files, key=lambda f: f.path))
    left_out = tuple(sorted(walk.left_out, key=lambda e: e.path))
    name = os.path.basename(jobfile)
    if not any(f.path == name for f in files):
        reason = next((e.reason for e in left_out if e.path == name), "not a regular file")
        raise ConfigError(f"raystream submit would leave the job file {jobfile} out ({reason}), so the cluster "
                          "would not have it: rename it, or take it out of the ignore file that names it")
    excludes = tuple(_anchored(e.path.rstrip("/"), ray.spec) for e in left_out)
    upload = Upload(folder, files, left_out, excludes, ray.size_limit)
    logger.debug("upload of %s: %s", jobfile, upload.summary())
    return upload


def _anchored(rel: str, spec: Callable[[list[str]], Any]) -> str:
    """A .gitignore pattern that matches exactly `rel` (and, for a folder, what it holds)."""
    pattern = "/" + re.sub(r"([\\*?\[\]])", r"\\\1", rel)
    trailing = len(pattern) - len(pattern.rstrip())
    if trailing:  # trailing blanks are dropped from a pattern unless bracketed
        pattern = pattern[:-trailing] + "".join(f"[{c}]" for c in pattern[-trailing:])
    # Checked with Ray's own matcher: a path it cannot name would travel after all.
    if not spec([pattern]).match_file(rel):
        raise ConfigError(f"cannot tell Ray to leave {rel!r} out (a name its patterns cannot express): rename it")
    return pattern


@dataclass(frozen=True)
class _RayRules:
    """How Ray packs a working_dir, read from the installed Ray so the model follows it."""

    spec: Callable[[list[str]], Any]  # Ray's copy of pathspec: PathSpec.from_lines("gitwildmatch", ...)
    default_excludes: Any  # compiled from Ray's default excludes
    ignore_files: tuple[str, ...]
    size_limit: int

    @classmethod
    def load(cls) -> _RayRules:
        def spec(lines: list[str]) -> Any:
            return PathSpec.from_lines("gitwildmatch", lines)

        with_gitignore = os.environ.get(RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"  # as the Jobs API client
        return cls(spec, spec(get_runtime_env_default_excludes()),
                   (".gitignore", ".rayignore") if with_gitignore else (".rayignore",), GCS_STORAGE_MAX_SIZE)


@dataclass(frozen=True)
class _Git:
    """The .gitignore files of one git work tree that apply in a folder of it, outermost first."""

    prefix: str  # turns a path relative to the job folder into one relative to the work tree's root:
    strip: int  # prefix + path[strip:]
    layers: tuple[tuple[str, GitIgnoreSpec], ...]  # (folder relative to the root, its .gitignore)
    info_exclude: GitIgnoreSpec | None

    @classmethod
    def around(cls, folder: str) -> _Git | None:
        """The rules of the work tree `folder` is in, down to `folder`; None outside git."""
        real = os.path.realpath(folder)
        root = real
        while not os.path.lexists(os.path.join(root, ".git")):  # a folder (or a worktree's file)
            if os.path.dirname(root) == root:
                return None
            root = os.path.dirname(root)
        rules = cls("", 0, (), _read(os.path.join(root, ".git", "info", "exclude"))).entering("", root)
        walked = ""
        for part in os.path.relpath(real, root).split(os.sep) if real != root else []:
            walked = f"{walked}/{part}" if walked else part
            if rules.ignored(walked, True):  # git never looks inside an ignored folder
                raise ConfigError(f"the job file's folder {folder} is ignored by the .gitignore files of the git "
                                  f"repository {root}, so none of it would be uploaded: move the job file, or "
                                  "stop ignoring its folder")
            rules = rules.entering(walked, os.path.join(root, walked))
        return cls(walked + "/" if walked else "", 0, rules.layers, rules.info_exclude)

    @classmethod
    def nested(cls, rel: str, path: str) -> _Git:
        """A work tree of its own at `rel` (a submodule, say): the outer rules stop there."""
        return cls("", len(rel) + 1, (), _read(os.path.join(path, ".git", "info", "exclude"))).entering(rel, path)

    def entering(self, rel: str, path: str) -> _Git:
        spec = _read(os.path.join(path, ".gitignore"))
        if spec is None:
            return self
        base = (self.prefix + rel[self.strip:]).rstrip("/")
        return _Git(self.prefix, self.strip, (*self.layers, (base, spec)), self.info_exclude)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        path = self.prefix + rel[self.strip:]
        suffix = "/" if is_dir else ""  # so that patterns ending in / match folders only
        # The deepest .gitignore with a matching pattern decides, then .git/info/exclude.
        for base, spec in reversed(self.layers):
            result = spec.check_file((path[len(base) + 1:] if base else path) + suffix)
            if result.include is not None:
                return bool(result.include)
        return self.info_exclude is not None and bool(self.info_exclude.match_file(path + suffix))


def _read(path: str) -> GitIgnoreSpec | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return GitIgnoreSpec.from_lines(f.read().splitlines())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


#: Ray's reading of the ignore files in the folder so far: (folder, its ignore file, file name).
_Layers = tuple[tuple[str, Any, str], ...]


class _Walk:
    """One pass over the job folder, as Ray's _dir_travel makes it: a folder left out is not entered."""

    def __init__(self, folder: str, ray: _RayRules):
        self.folder = folder
        self.real = os.path.realpath(folder)
        self.ray = ray
        self.files: list[UploadFile] = []
        self.left_out: list[LeftOut] = []
        self.links: list[tuple[str, str, _Git | None, _Layers]] = []  # decided once the rest is known
        self.named_secrets: set[str] = set()
        for variable in SECRET_FILE_VARIABLES:
            for value in filter(None, os.environ.get(variable, "").split(os.pathsep)):
                named = os.path.realpath(os.path.expanduser(value))
                if os.path.commonpath([named, self.real]) == self.real and named != self.real:
                    self.named_secrets.add(os.path.relpath(named, self.real).replace(os.sep, "/"))

    def run(self) -> None:
        ray_layers = self._ray_layers("", self.folder, ())
        for base, spec, label in ray_layers:  # Ray checks the working_dir itself too, as "."
            if spec.match_file("."):
                raise ConfigError(f"Ray would upload nothing from {self.folder}: its {label} matches the folder "
                                  "itself (a pattern such as * or .*); narrow that pattern")
        self._visit(self.folder, "", _Git.around(self.folder), ray_layers)
        kept = {f.path for f in self.files}
        for path, rel, git, layers in self.links:
            reason = self._reason(rel, False, git, layers)
            target = os.path.realpath(path)
            inside = os.path.relpath(target, self.real).replace(os.sep, "/")
            if reason is None and (os.path.isdir(target) or inside not in kept):
                reason = SYMLINK  # Ray would follow it, out of the folder or into what is left out
            if reason is not None:
                self.left_out.append(LeftOut(rel, reason))
            elif os.path.isfile(target):
                self.files.append(UploadFile(rel, os.stat(target).st_size))

    def _visit(self, path: str, rel_dir: str, git: _Git | None, ray_layers: _Layers) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:  # Ray's packing would stop at it too
            raise ConfigError(f"cannot list {path} for the upload: {exc}") from None
        for entry in entries:
            rel = rel_dir + entry.name
            if entry.is_symlink():
                self.links.append((entry.path, rel, git, ray_layers))
            elif entry.is_dir(follow_symlinks=False):
                # Ray reads a folder's ignore files before it checks the folder (as ".") against them.
                inner = self._ray_layers(rel, entry.path, ray_layers)
                reason = self._reason(rel, True, git, inner)
                if reason is not None:
                    self.left_out.append(LeftOut(rel + "/", reason))
                    continue
                inner_git = (_Git.nested(rel, entry.path) if os.path.lexists(os.path.join(entry.path, ".git"))
                             else git.entering(rel, entry.path) if git else None)
                self._visit(entry.path, rel + "/", inner_git, inner)
            elif entry.is_file(follow_symlinks=False):
                reason = self._reason(rel, False, git, ray_layers)
                if reason is None:
                    self.files.append(UploadFile(rel, entry.stat(follow_symlinks=False).st_size))
                else:
                    self.left_out.append(LeftOut(rel, reason))
            # sockets, pipes, devices: Ray packs none of them

    def _ray_layers(self, rel: str, path: str, outer: _Layers) -> _Layers:
        layers = list(outer)
        for name in self.ray.ignore_files:
            try:
                with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                    layers.append((rel, self.ray.spec(f.readlines()), name))
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass
        return tuple(layers)

    def _reason(self, rel: str, is_dir: bool, git: _Git | None, ray_layers: _Layers) -> str | None:
        if _SECRETS.match_file(rel.lower() + ("/" if is_dir else "")) or rel in self.named_secrets:
            return SECRET
        if git is not None and git.ignored(rel, is_dir):
            return GITIGNORE
        # As Ray reads the ignore files in the folder: each on its own, any match drops the path
        # (so a deeper file's `!pattern` cannot bring back what a shallower one drops, unlike git).
        # A folder is also checked as "folder/": Ray would drop all it holds one by one, and
        # git ignores a folder whole (`!pattern` cannot bring back a file inside).
        for base, spec, label in ray_layers:
            sub = "." if rel == base else rel[len(base) + 1:] if base else rel
            if spec.match_file(sub) or (is_dir and sub != "." and spec.match_file(sub + "/")):
                return label
        if self.ray.default_excludes.match_file(rel):
            return RAY_DEFAULT
        return None
