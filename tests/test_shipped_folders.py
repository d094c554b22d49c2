"""Every empty folder the repository ships (held by a `.keep`) is one the app reads with its default flags, so a
user who drops a file into a shipped folder sees it used."""
from __future__ import annotations

import subprocess
from pathlib import Path

import app
from backend.upscale.registry import UPSCALER_FOLDERS

ROOT = Path(__file__).resolve().parent.parent


def shipped_folders() -> set[Path]:
    listed = subprocess.run(["git", "ls-files", "*.keep", "**/.keep"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return {(ROOT / name).parent.resolve() for name in listed}


def folders_read_by_default() -> set[Path]:
    settings = app.settings_from_args(app.parse_args([]))
    read = {settings.checkpoints_dir, settings.lora_dir, settings.vae_dir, settings.embeddings_dir,
            settings.extensions_dir, settings.models_dir / "VAE-approx", settings.text_encoder_dir,
            settings.controlnet_dir, settings.controlnet_preprocessor_dir, settings.ipadapter_dir,
            settings.clip_vision_dir,
            *(settings.models_dir / name for name in UPSCALER_FOLDERS)}
    return {Path(folder).resolve() for folder in read}


def test_every_shipped_folder_is_read_by_the_app():
    shipped = shipped_folders()
    assert ROOT / "models" / "Stable-diffusion" in shipped
    assert not shipped - folders_read_by_default(), "shipped but never read"


def test_the_embeddings_folder_the_app_reads_is_shipped():
    settings = app.settings_from_args(app.parse_args([]))
    assert settings.embeddings_dir.resolve() in shipped_folders()
