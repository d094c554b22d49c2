"""The README as a fresh clone sees it: every relative link resolves inside the repository, and the set-up
section keeps the default command while offering PyTorch's CPU wheels, and the flags it names are app.py's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_relative_links_point_at_files_in_the_repository():
    relative = [target for target in LINK.findall(README) if not re.match(r"[a-z]+:", target)
                and not target.startswith("#")]
    assert relative, "the README links its companion documents"
    for target in relative:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{target} points outside the repository (a clone does not have it)"
        assert path.exists(), f"{target} does not exist"


def test_setup_keeps_the_default_command_and_offers_cpu_wheels():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    default = ".venv/bin/pip install -r requirements.txt && .venv/bin/python app.py"
    assert any(command.endswith(default) and CPU_INDEX not in command for command in commands)
    (cpu,) = [command for command in commands if CPU_INDEX in command]
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M))
    # the CPU wheels are installed at the pinned versions, so `-r requirements.txt` keeps them
    assert f"torch=={pins['torch']}" in cpu and f"torchvision=={pins['torchvision']}" in cpu
    assert cpu.index(CPU_INDEX) < cpu.index("-r requirements.txt")


def test_flag_table_and_scaling_commands_name_only_flags_app_accepts(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    accepted = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", capsys.readouterr().out))
    table = README.split("## Command-line flags", 1)[1].split("\n## ", 1)[0]
    named = {flag for row in table.splitlines() if row.startswith("| `")
             for flag in re.findall(r"--[a-z][a-z0-9-]+", row.split(" | ")[0])}
    scaling = README.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    for command in re.findall(r"```bash\n(.*?)\n```", scaling, re.S):
        named |= {flag for line in command.splitlines() if "app.py" in line
                  for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", line)}
    assert {"--workers", "--ray-address", "--worker-threads", "--ray-dashboard"} <= named
    assert named <= accepted, f"the README names flags app.py does not have: {sorted(named - accepted)}"
