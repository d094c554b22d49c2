"""What git says about an extension's folder (remote, branch, commit, its date), for A1111's /extensions list.
Empty strings when the folder is no git checkout or git is missing; git never waits for input or the network."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_SECONDS = 10
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@]+@")  # https://user:token@host/...: never shown


@dataclass(frozen=True)
class GitFacts:
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    commit_date: int = 0  # seconds since the epoch, as A1111 reports it


def _git(folder: Path, *arguments: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(folder), *arguments], capture_output=True, text=True, check=True,
                              timeout=GIT_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL,
                              env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_facts(folder: Path) -> GitFacts:
    if not (Path(folder) / ".git").exists():
        return GitFacts()
    date = _git(folder, "log", "-1", "--format=%ct")
    return GitFacts(remote=URL_CREDENTIALS.sub("", _git(folder, "config", "--get", "remote.origin.url")),
                    branch=_git(folder, "rev-parse", "--abbrev-ref", "HEAD"),
                    commit_hash=_git(folder, "rev-parse", "HEAD"), commit_date=int(date) if date.isdigit() else 0)
