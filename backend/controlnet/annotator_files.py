"""The preprocessors that need weights (depth, normal, pose, line art, soft edge, segmentation...): which files
sd-webui-controlnet reads for each, in its annotator/downloads/<folder>/<file> layout. They are listed so a user
sees what to install, and never downloaded. Those in weighted_runs.NETWORK_RUNS (line art, soft edge, M-LSD,
MiDaS, normal_bae, LeReS, openpose, OneFormer, UniFormer and anime face segmentation, Depth Anything v1 and v2) run
once their files are there; a unit naming another is refused with the files it needs (or, once they are there, with
the fact that its network is not built in)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.core.errors import UserError


@dataclass(frozen=True)
class WeightedPreprocessor:
    name: str
    files: tuple[str, ...]  # "<annotator folder>/<file name>"
    label: str = ""
    tags: tuple[str, ...] = ()
    priority: int = 0

    @property
    def public_name(self) -> str:
        return self.label or self.name


# listed first in the extension's dropdown (its "priority" 100)
FIRST_LISTED = {"depth", "normal_bae", "openpose_full", "pidinet_scribble", "oneformer_ade20k", "pidinet"}


def weighted(name, *files, label="", tags=()):
    return WeightedPreprocessor(name, files, label, tags, 100 if name in FIRST_LISTED else 0)


MIDAS = "midas/dpt_hybrid-midas-501f0c75.pt"
OPENPOSE = ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth")
HED = "hed/ControlNetHED.pth"
PIDINET = "pidinet/table5_pidinet.pth"

WEIGHTED = (
    weighted("depth", MIDAS, label="depth_midas", tags=("Depth",)),
    weighted("depth_leres", "leres/res101.pth", tags=("Depth",)),
    weighted("depth_leres++", "leres/res101.pth", "leres/latest_net_G.pth", tags=("Depth",)),
    weighted("depth_zoe", "zoedepth/ZoeD_M12_N.pt", tags=("Depth",)),
    weighted("depth_anything", "depth_anything/depth_anything_vitl14.pth", tags=("Depth",)),
    weighted("depth_anything_v2", "depth_anything_v2/depth_anything_v2_vitl.safetensors", tags=("Depth",)),
    weighted("normal_map", MIDAS, label="normal_midas", tags=("NormalMap",)),
    weighted("normal_bae", "normal_bae/scannet.pt", tags=("NormalMap",)),
    weighted("normal_dsine", "normal_dsine/dsine.pt", tags=("NormalMap",)),
    weighted("openpose", OPENPOSE[0], tags=("OpenPose",)),
    weighted("openpose_face", OPENPOSE[0], OPENPOSE[2], tags=("OpenPose",)),
    # the face is found where the body detected puts it, so the body's file is needed too
    weighted("openpose_faceonly", OPENPOSE[0], OPENPOSE[2], tags=("OpenPose",)),
    weighted("openpose_hand", OPENPOSE[0], OPENPOSE[1], tags=("OpenPose",)),
    weighted("openpose_full", *OPENPOSE, tags=("OpenPose",)),
    weighted("dw_openpose_full", "openpose/yolox_l.onnx", "openpose/dw-ll_ucoco_384.onnx", tags=("OpenPose",)),
    weighted("animal_openpose", "openpose/yolox_l.onnx", "openpose/rtmpose-m_ap10k_256.onnx", tags=("OpenPose",)),
    weighted("lineart", "lineart/sk_model.pth", label="lineart_realistic", tags=("Lineart",)),
    weighted("lineart_coarse", "lineart/sk_model2.pth", tags=("Lineart",)),
    weighted("lineart_anime", "lineart_anime/netG.pth", tags=("Lineart",)),
    weighted("lineart_anime_denoise", "manga_line/erika.pth", tags=("Lineart",)),
    weighted("hed", HED, label="softedge_hed", tags=("SoftEdge",)),
    weighted("hed_safe", HED, label="softedge_hedsafe", tags=("SoftEdge",)),
    weighted("pidinet", PIDINET, label="softedge_pidinet", tags=("SoftEdge",)),
    weighted("pidinet_safe", PIDINET, label="softedge_pidisafe", tags=("SoftEdge",)),
    weighted("softedge_teed", "TEED/7_model.pth", tags=("SoftEdge",)),
    weighted("scribble_hed", HED, tags=("Scribble",)),
    weighted("pidinet_scribble", PIDINET, label="scribble_pidinet", tags=("Scribble",)),
    weighted("mlsd", "mlsd/mlsd_large_512_fp32.pth", tags=("MLSD",)),
    weighted("segmentation", "uniformer/upernet_global_small.pth", label="seg_ufade20k", tags=("Segmentation",)),
    weighted("oneformer_ade20k", "oneformer/250_16_swin_l_oneformer_ade20k_160k.pth", label="seg_ofade20k",
             tags=("Segmentation",)),
    weighted("oneformer_coco", "oneformer/150_16_swin_l_oneformer_coco_100ep.pth", label="seg_ofcoco",
             tags=("Segmentation",)),
    weighted("anime_face_segment", "anime_face_segment/UNet.pth", label="seg_anime_face", tags=("Segmentation",)),
    weighted("inpaint_only+lama", "lama/ControlNetLama.pth", tags=("Inpaint",)),
    weighted("densepose", "densepose/densepose_r50_fpn_dl.torchscript", label="densepose (pruple bg & purple torso)",
             tags=("OpenPose",)),
    weighted("densepose_parula", "densepose/densepose_r50_fpn_dl.torchscript",
             label="densepose_parula (black bg & blue torso)", tags=("OpenPose",)),
)


def find_file(folder: Path, relative: str) -> Path | None:
    """`relative` ("<annotator folder>/<file>") under `folder`, in the extension's layout, under its downloads/
    folder, or flat."""
    name = relative.rsplit("/", 1)[-1]
    for candidate in (folder / relative, folder / "downloads" / relative, folder / name):
        if candidate.is_file():
            return candidate
    return None


def missing_files(preprocessor: WeightedPreprocessor, folder: Path) -> list[str]:
    return [relative for relative in preprocessor.files if find_file(folder, relative) is None]


class PreprocessorUnavailable(UserError):
    """A preprocessor that needs weights which are not installed, or whose network is not built in yet."""


def refuse(preprocessor: WeightedPreprocessor, folder: Path, field: str) -> PreprocessorUnavailable:
    missing = missing_files(preprocessor, folder)
    if missing:
        where = ", ".join(str(folder / relative) for relative in missing)
        return PreprocessorUnavailable(field, f"preprocessor '{preprocessor.public_name}' needs {where}; put the "
                                              "file(s) there (they are never downloaded), or use a preprocessor "
                                              "that needs no weights (canny, scribble_xdog, lineart_standard...)")
    return PreprocessorUnavailable(field, f"preprocessor '{preprocessor.public_name}' is not built in yet (its "
                                          "files are installed); run it elsewhere and send the detected map with "
                                          "module 'none'")
