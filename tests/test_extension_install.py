"""Installing, updating and removing extensions from git, the index, and the refusal on exposed servers."""
from __future__ import annotations

import json
import subprocess

import pytest

from backend.plugins.installer import (
    ExtensionInstaller,
    ExtensionInstallError,
    extension_access,
    folder_name_for,
    read_index,
)

EXTENSION = '''
__version__ = "{version}"


def register(api):
    api.on_before_save(lambda info: {{"Greeting": "{version}"}})
'''


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.com",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def origin(tmp_path):
    """A local git repository holding an extension, reachable as a file:// URL."""
    repo = tmp_path / "origin" / "greeter"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "__init__.py").write_text(EXTENSION.format(version="1.0"))
    (repo / "requirements.txt").write_text("pillow\n")  # already installed: pip needs no network
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_install_load_update_and_uninstall_from_a_git_url(make_services, origin, tmp_path):
    folder = tmp_path / "extensions"
    installer = ExtensionInstaller(folder, refused_because=None)
    log = installer.install(f"file://{origin}", branch="main")
    assert "git clone" in log and "Requirement already satisfied" in log and "restart" in log
    assert (folder / "greeter" / "__init__.py").is_file()
    services = make_services(extensions_dir=folder)
    (record,) = services.extensions.records
    assert record.name == "greeter" and record.loaded and record.version == "1.0"

    (origin / "__init__.py").write_text(EXTENSION.format(version="2.0"))
    git(origin, "commit", "-q", "-am", "second")
    log = installer.update("greeter")
    assert "git pull" in log
    assert git(folder / "greeter", "rev-parse", "HEAD") == git(origin, "rev-parse", "HEAD")
    assert next(r for r in make_services(extensions_dir=folder).extensions.records).version == "2.0"

    with pytest.raises(ExtensionInstallError, match="already installed"):
        installer.install(f"file://{origin}")
    assert "Removed greeter" in installer.uninstall("greeter")
    assert not (folder / "greeter").exists()
    with pytest.raises(ExtensionInstallError, match="no extension named"):
        installer.uninstall("greeter")


def test_failed_clone_leaves_nothing_behind(tmp_path):
    installer = ExtensionInstaller(tmp_path / "extensions", refused_because=None)
    with pytest.raises(ExtensionInstallError, match="git clone failed"):
        installer.install(f"file://{tmp_path}/missing-repo")
    assert list((tmp_path / "extensions").iterdir()) == []


@pytest.mark.parametrize("url", ["--upload-pack=touch /tmp/owned", "/just/a/path", "ext::sh -c 'id'", ""])
def test_only_git_urls_are_accepted(tmp_path, url):
    with pytest.raises(ExtensionInstallError, match="not a git URL"):
        ExtensionInstaller(tmp_path, refused_because=None).install(url)


@pytest.mark.parametrize("name", ["../outside", "a/b", ".."])
def test_names_cannot_leave_the_extensions_folder(tmp_path, name):
    with pytest.raises(ExtensionInstallError, match="invalid extension name"):
        ExtensionInstaller(tmp_path / "extensions", refused_because=None).uninstall(name)


def test_exposed_servers_refuse_installs_unless_the_operator_opts_in(origin, tmp_path):
    assert extension_access(listen=False, share=False, insecure=False) is None
    assert extension_access(listen=True, share=False, insecure=True) is None
    reason = extension_access(listen=True, share=False, insecure=False)
    assert "--listen" in reason and "--enable-insecure-extension-access" in reason
    assert "--share" in extension_access(listen=False, share=True, insecure=False)
    installer = ExtensionInstaller(tmp_path / "extensions", refused_because=reason)
    for action in (lambda: installer.install(f"file://{origin}"), lambda: installer.update("greeter"),
                   lambda: installer.uninstall("greeter")):
        with pytest.raises(ExtensionInstallError, match="--listen"):
            action()
    assert not (tmp_path / "extensions").exists()


def test_index_in_a1111_format(tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"tags": {"script": "Scripts"}, "extensions": [
        {"name": "Greeter", "url": "https://example.com/me/greeter.git", "description": "Says hi",
         "tags": ["script"], "added": "2024-01-01"},
        {"name": "No URL"}]}))
    (entry,) = read_index(str(index))
    assert (entry.name, entry.url, entry.description, entry.tags) == ("Greeter", "https://example.com/me/greeter.git",
                                                                       "Says hi", ("script",))
    assert folder_name_for(entry.url) == "greeter" and folder_name_for("git@host:me/tool.git") == "tool"
    with pytest.raises(ExtensionInstallError, match="cannot read"):
        read_index(str(tmp_path / "missing.json"))
