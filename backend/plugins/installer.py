"""Install, update and uninstall extensions from git, and read an extension index (A1111's index.json format).

Installing runs foreign code on the server, so it is refused while the server is reachable beyond this
machine (--listen) or through a public link (--share), unless the operator opted in with
--enable-insecure-extension-access; loading the index and switching extensions on or off are refused exactly
then too. Changes take effect at the next start: loaded code cannot be unloaded.
"""
from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from backend.core.errors import UserError
from backend.plugins import index as extension_index
from backend.plugins.index import IndexEntry

GIT_TIMEOUT_SECONDS = 300
PIP_TIMEOUT_SECONDS = 900
URL_PATTERN = re.compile(r"^(https?://|ssh://|git://|file://|git@[\w.-]+:)[^\s]+$")
NAME_PATTERN = re.compile(r"^[\w][\w.-]*$")
DEFAULT_INDEX = "https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/index.json"


class ExtensionInstallError(UserError):
    """Install/update/uninstall could not be done; the message says why, for the user."""

    def __init__(self, message: str):
        super().__init__(None, message)


def extension_access(listen: bool, share: bool, insecure: bool) -> str | None:
    """None when installing is allowed, else the reason it is refused."""
    if insecure or not (listen or share):
        return None
    exposed = "shares a public link (--share)" if share else "listens beyond this machine (--listen)"
    return (f"Installing, updating, removing and switching extensions on or off, and loading the extension index, "
            f"are off because this server {exposed}: anyone who can reach it could run code on it. Restart without "
            "that flag, or add --enable-insecure-extension-access if you trust everyone who can reach it.")


def read_index(source: str, local: bool = True, tls: ssl.SSLContext | None = None) -> list[IndexEntry]:
    """An extension index from an https URL or (`local` servers only) a JSON file; see backend.plugins.index."""
    try:
        return extension_index.read_index(source, local, tls)
    except extension_index.ExtensionIndexError as error:
        raise ExtensionInstallError(f"cannot read the extension index: {error}") from None


def folder_name_for(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    if not NAME_PATTERN.match(name):
        raise ExtensionInstallError(f"cannot derive a folder name from {url!r}; give one")
    return name


class ExtensionInstaller:
    def __init__(self, folder: Path | None, refused_because: str | None, local: bool = True):
        """`local`: the server is reachable from this machine only (it may then read an index from its own
        network or disk)."""
        self.folder = Path(folder) if folder else None
        self.refused_because = refused_because
        self.local = local

    def load_index(self, source: str, tls: ssl.SSLContext | None = None) -> list[IndexEntry]:
        """The extension index at `source` (an https URL, or a file for a local server); refused when installing
        is."""
        self._refuse_if_off()
        return read_index(source, self.local, tls)

    def apply_enabled(self, extensions, chosen: list[str]):
        """Remember which installed extensions load at the next start; refused when installing is (switching an
        installed extension on runs its code too)."""
        self._refuse_if_off()
        for record in extensions.records:
            if not record.path.name.endswith(".disabled"):
                extensions.set_enabled(record.name, record.name in chosen)

    def _refuse_if_off(self):
        if self.refused_because:
            raise ExtensionInstallError(self.refused_because)

    def _check(self) -> Path:
        self._refuse_if_off()
        if self.folder is None:
            raise ExtensionInstallError("this server has no extensions folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def _target(self, name: str) -> Path:
        folder = self._check()
        if not NAME_PATTERN.match(name) or name in (".", ".."):
            raise ExtensionInstallError(f"invalid extension name {name!r}")
        target = (folder / name).resolve()
        if target.parent != folder.resolve():
            raise ExtensionInstallError(f"invalid extension name {name!r}")
        return target

    def install(self, url: str, branch: str = "", name: str = "") -> str:
        """git clone (and pip install its requirements.txt); returns the log to show."""
        url, branch = url.strip(), branch.strip()
        if not URL_PATTERN.match(url):
            raise ExtensionInstallError(f"not a git URL: {url!r} (https://, ssh://, git@host:, file://)")
        if branch and not NAME_PATTERN.match(branch.replace("/", "_")):
            raise ExtensionInstallError(f"invalid branch name {branch!r}")
        target = self._target(name.strip() or folder_name_for(url))
        if target.exists() or target.with_name(target.name + ".disabled").exists():
            raise ExtensionInstallError(f"an extension named {target.name} is already installed")
        command = ["git", "clone", "--depth", "1", *(["--branch", branch] if branch else []), "--", url, str(target)]
        log = [self._run(command, "git clone", GIT_TIMEOUT_SECONDS, cleanup=target)]
        log.append(self._requirements(target))
        return "\n".join(part for part in log if part) + f"\nInstalled {target.name}; restart the server to load it."

    def update(self, name: str) -> str:
        target = self._installed(name)
        if not (target / ".git").exists():
            raise ExtensionInstallError(f"{name} was not installed from git; nothing to update from")
        log = [self._run(["git", "-C", str(target), "pull", "--ff-only"], "git pull", GIT_TIMEOUT_SECONDS)]
        log.append(self._requirements(target))
        return "\n".join(part for part in log if part) + f"\nUpdated {name}; restart the server to load the new code."

    def uninstall(self, name: str) -> str:
        target = self._installed(name)
        shutil.rmtree(target)
        return f"Removed {target.name}; restart the server to unload it."

    def _installed(self, name: str) -> Path:
        target = self._target(name)
        for candidate in (target, target.with_name(target.name + ".disabled")):
            if candidate.is_dir():
                return candidate
        raise ExtensionInstallError(f"no extension named {name!r} is installed")

    def _requirements(self, target: Path) -> str:
        requirements = target / "requirements.txt"
        if not requirements.is_file():
            return ""
        return self._run([sys.executable, "-m", "pip", "install", "-r", str(requirements)],
                         "pip install -r requirements.txt", PIP_TIMEOUT_SECONDS)

    @staticmethod
    def _run(command: list[str], what: str, timeout: int, cleanup: Path | None = None) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})  # never wait for a password
        except (OSError, subprocess.TimeoutExpired) as error:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            raise ExtensionInstallError(f"{what} failed: {error}") from error
        output = f"$ {what}\n{done.stdout}{done.stderr}".rstrip()
        if done.returncode != 0:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            raise ExtensionInstallError(f"{what} failed (exit {done.returncode}):\n{output}")
        return output

