"""depth_anything and depth_anything_v2 run when the extension's depth_anything/depth_anything_vitl14.pth and
depth_anything_v2/depth_anything_v2_vitl.safetensors are in models/ControlNetPreprocessor/: tiny checkpoints are
written here in the original layout (DINOv2's names under "pretrained.", the DPT head's under "depth_head.", spelled
out below), the v1 one as a pickled state dict, the v2 one as safetensors. The maps are checked against transformers'
DepthAnythingForDepthEstimation filled here by a renaming written out below, with the extension's transform and
8-bit post-processing written out here too."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.depth_anything_network import build_network, depth_anything_network, mapped_state, network_size
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.controlnet.weighted_runs import NETWORK_RUNS
from backend.core.errors import UserError

V1, V2 = "depth_anything/depth_anything_vitl14.pth", "depth_anything_v2/depth_anything_v2_vitl.safetensors"
WIDTH, DEPTH, GRID, NECK, FUSION = 64, 12, 37, (8, 16, 32, 32), 16  # one 64-channel head; 37x37 patches of 14


def original_shapes(width=WIDTH, depth=DEPTH, grid=GRID, neck=NECK, fusion=FUSION) -> dict[str, tuple]:
    """Every tensor of the original DPT_DINOv2 / DepthAnythingV2, by its original name."""
    shapes = {"pretrained.cls_token": (1, 1, width), "pretrained.pos_embed": (1, grid * grid + 1, width),
              "pretrained.mask_token": (1, width), "pretrained.patch_embed.proj.weight": (width, 3, 14, 14),
              "pretrained.patch_embed.proj.bias": (width,)}

    def layer(name, *shape, bias=True):
        shapes[f"{name}.weight"] = shape
        if bias:
            shapes[f"{name}.bias"] = shape[:1]  # the resize layers keep their channels: in == out

    for block in range(depth):
        name = f"pretrained.blocks.{block}"
        layer(f"{name}.norm1", width)
        layer(f"{name}.attn.qkv", 3 * width, width)
        layer(f"{name}.attn.proj", width, width)
        shapes[f"{name}.ls1.gamma"] = (width,)
        layer(f"{name}.norm2", width)
        layer(f"{name}.mlp.fc1", 4 * width, width)
        layer(f"{name}.mlp.fc2", width, 4 * width)
        shapes[f"{name}.ls2.gamma"] = (width,)
    layer("pretrained.norm", width)
    for index, channels in enumerate(neck):
        layer(f"depth_head.projects.{index}", channels, width, 1, 1)
    layer("depth_head.resize_layers.0", neck[0], neck[0], 4, 4)  # transposed convolutions: (in, out, k, k)
    layer("depth_head.resize_layers.1", neck[1], neck[1], 2, 2)
    layer("depth_head.resize_layers.3", neck[3], neck[3], 3, 3)
    for index, channels in enumerate(neck, start=1):
        layer(f"depth_head.scratch.layer{index}_rn", fusion, channels, 3, 3, bias=False)
        name = f"depth_head.scratch.refinenet{index}"
        layer(f"{name}.out_conv", fusion, fusion, 1, 1)
        for unit in (1, 2):
            for conv in (1, 2):
                layer(f"{name}.resConfUnit{unit}.conv{conv}", fusion, fusion, 3, 3)
    layer("depth_head.scratch.output_conv1", fusion // 2, fusion, 3, 3)
    layer("depth_head.scratch.output_conv2.0", 32, fusion // 2, 3, 3)
    layer("depth_head.scratch.output_conv2.2", 1, 32, 1, 1)
    return shapes


def tiny_original_state(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors everywhere (norms, layer scales and biases too), so a tensor in the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in original_shapes().items():
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
            state[name] = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:
            fan_in = int(np.prod(shape[1:])) if name.endswith(".weight") else 1
            state[name] = torch.randn(shape, generator=generator) / max(1, fan_in) ** 0.5
    state["depth_head.scratch.output_conv2.2.bias"] = torch.tensor([0.5])  # mostly above the final ReLU
    return state


@pytest.fixture(scope="session")
def depth_anything_files(tmp_path_factory):
    """The tiny v1 file in the extension's downloads/ layout, the v2 file in ours, from the same tensors."""
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    original = tiny_original_state()
    (folder / "downloads" / V1).parent.mkdir(parents=True)
    torch.save(original, folder / "downloads" / V1)
    (folder / V2).parent.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in original.items()}, folder / V2)
    return folder, original


@pytest.fixture(scope="module")
def catalog(depth_anything_files):
    return PreprocessorCatalog(depth_anything_files[0])


def picture(height=64, width=64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (90, 160, 230)
    cv2.circle(image, (width // 3, 2 * height // 3), height // 4, (40, 180, 60), thickness=-1)
    cv2.rectangle(image, (width // 2, height // 3), (width - 6, height - 6), (200, 40, 40), thickness=-1)
    return image


def detect(catalog, module, image, resolution=64):
    preprocessor = catalog.get(module)
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, None, None))


def renamed_for_transformers(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' conversion (convert_depth_anything_to_hf.py), spelled out name by name, with the attention's
    current names (q_proj, k_proj, v_proj, o_proj for query, key, value and output.dense)."""
    state = {"backbone.embeddings.cls_token": original["pretrained.cls_token"],
             "backbone.embeddings.mask_token": original["pretrained.mask_token"],
             "backbone.embeddings.position_embeddings": original["pretrained.pos_embed"],
             "backbone.layernorm.weight": original["pretrained.norm.weight"],
             "backbone.layernorm.bias": original["pretrained.norm.bias"]}
    for kind in ("weight", "bias"):
        state[f"backbone.embeddings.patch_embeddings.projection.{kind}"] = \
            original[f"pretrained.patch_embed.proj.{kind}"]
        for block in range(DEPTH):
            ours, theirs = f"backbone.encoder.layer.{block}", f"pretrained.blocks.{block}"
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                state[f"{ours}.{name}.{kind}"] = original[f"{theirs}.{name}.{kind}"]
            state[f"{ours}.attention.o_proj.{kind}"] = original[f"{theirs}.attn.proj.{kind}"]
            qkv = original[f"{theirs}.attn.qkv.{kind}"]
            state[f"{ours}.attention.q_proj.{kind}"] = qkv[:WIDTH]
            state[f"{ours}.attention.k_proj.{kind}"] = qkv[WIDTH:2 * WIDTH]
            state[f"{ours}.attention.v_proj.{kind}"] = qkv[2 * WIDTH:]
        for index in range(4):
            state[f"neck.reassemble_stage.layers.{index}.projection.{kind}"] = \
                original[f"depth_head.projects.{index}.{kind}"]
            if index != 2:
                state[f"neck.reassemble_stage.layers.{index}.resize.{kind}"] = \
                    original[f"depth_head.resize_layers.{index}.{kind}"]
        for refinenet, layer in ((1, 3), (2, 2), (3, 1), (4, 0)):
            ours, theirs = f"neck.fusion_stage.layers.{layer}", f"depth_head.scratch.refinenet{refinenet}"
            state[f"{ours}.projection.{kind}"] = original[f"{theirs}.out_conv.{kind}"]
            for unit in (1, 2):
                for conv in (1, 2):
                    state[f"{ours}.residual_layer{unit}.convolution{conv}.{kind}"] = \
                        original[f"{theirs}.resConfUnit{unit}.conv{conv}.{kind}"]
        state[f"head.conv1.{kind}"] = original[f"depth_head.scratch.output_conv1.{kind}"]
        state[f"head.conv2.{kind}"] = original[f"depth_head.scratch.output_conv2.0.{kind}"]
        state[f"head.conv3.{kind}"] = original[f"depth_head.scratch.output_conv2.2.{kind}"]
    for block in range(DEPTH):
        for scale in (1, 2):
            state[f"backbone.encoder.layer.{block}.layer_scale{scale}.lambda1"] = \
                original[f"pretrained.blocks.{block}.ls{scale}.gamma"]
    for index in range(4):
        state[f"neck.convs.{index}.weight"] = original[f"depth_head.scratch.layer{index + 1}_rn.weight"]
    return state


def reference_model(original, version):
    """transformers' model as its conversion script configures it: v1 reads the last four blocks, v2 (ViT-S/B: 12
    blocks) blocks 2, 5, 8 and 11; stage 0 is the embeddings."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    stages = [9, 10, 11, 12] if version == 1 else [3, 6, 9, 12]
    backbone = Dinov2Config(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=1, patch_size=14,
                            image_size=GRID * 14, out_indices=stages, apply_layernorm=True,
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=WIDTH, patch_size=14,
                                 neck_hidden_sizes=list(NECK), fusion_hidden_size=FUSION)
    model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(renamed_for_transformers(original))
    return model.eval()


def reference_map(model, image: np.ndarray) -> np.ndarray:
    """The annotator on an image already at the resolution (a multiple of 64: no pad): BGR->RGB on the RGB image,
    /255, Resize(518, 518, keep aspect, multiple of 14, lower bound, cubic), ImageNet normalisation; the depth
    scaled bilinearly to the image, min-max to 0-255, cast to uint8."""
    height, width = image.shape[:2]
    assert height % 64 == width % 64 == 0
    pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) / 255.0
    scale = max(518 / height, 518 / width)

    def constrained(value):
        rounded = int(np.round(value / 14) * 14)
        return rounded if rounded >= 518 else int(np.ceil(value / 14) * 14)

    pixels = cv2.resize(pixels, (constrained(scale * width), constrained(scale * height)),
                        interpolation=cv2.INTER_CUBIC)
    pixels = (pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    tensor = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))[None]
    with torch.inference_mode():
        depth = model(tensor).predicted_depth
    depth = F.interpolate(depth[None], (height, width), mode="bilinear", align_corners=False)[0, 0]
    depth = (depth - depth.min()) / (depth.max() - depth.min()) * 255.0
    return np.stack([depth.numpy().astype(np.uint8)] * 3, axis=2)


@pytest.fixture(scope="module")
def detected_maps(catalog):
    """Each version's map of the same picture, detected once for the tests below."""
    return {module: detect(catalog, module, picture()) for module in ("depth_anything", "depth_anything_v2")}


@pytest.mark.parametrize("module, version", [("depth_anything", 1), ("depth_anything_v2", 2)])
def test_the_map_is_transformers_depth_anything_spread_over_8_bits(detected_maps, depth_anything_files, module,
                                                                   version):
    detected = detected_maps[module]
    assert detected.shape == (64, 64, 3) and detected.dtype == np.uint8
    expected = reference_map(reference_model(depth_anything_files[1], version), picture())
    assert np.array_equal(detected, expected)
    assert detected.min() == 0 and detected.max() == 255 and len(np.unique(detected)) > 20


def test_v1_and_v2_read_different_blocks_of_the_same_tensors(detected_maps):
    assert not np.array_equal(detected_maps["depth_anything"], detected_maps["depth_anything_v2"])


def network(catalog, module, relative):
    path = catalog.weights_dir / relative
    path = path if path.exists() else catalog.weights_dir / "downloads" / relative
    return catalog.networks.get((path,), NETWORK_RUNS[module].build, sized_by_file=True)


@pytest.mark.parametrize("module, relative", [("depth_anything", V1), ("depth_anything_v2", V2)])
def test_the_network_holds_the_files_weights(catalog, depth_anything_files, module, relative):
    """Read back, every tensor equals the one written under the original name (qkv: the three parts joined)."""
    loaded, written = network(catalog, module, relative).state_dict(), depth_anything_files[1]
    expected = renamed_for_transformers(written)
    assert set(loaded) == set(expected) and len(loaded) == len(written) + 4 * DEPTH  # each qkv weight and bias in three
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    for block in range(DEPTH):
        joined = torch.cat([loaded[f"backbone.encoder.layer.{block}.attention.{part}.weight"]
                            for part in ("q_proj", "k_proj", "v_proj")])
        assert torch.equal(joined, written[f"pretrained.blocks.{block}.attn.qkv.weight"])


def test_other_grids_scale_the_position_embeddings_as_dinov2_does(catalog):
    """DINOv2 scales its 37x37 table by (grid + 0.1) / 37 per side (bicubic); transformers' own scaling to the size
    samples elsewhere, so it is replaced."""
    embeddings = network(catalog, "depth_anything", V1).backbone.embeddings
    table = embeddings.position_embeddings
    rows, columns = 37, 52
    tokens = torch.zeros(1, rows * columns + 1, WIDTH)
    patches = table[:, 1:].reshape(1, GRID, GRID, WIDTH).permute(0, 3, 1, 2)
    scaled = F.interpolate(patches, scale_factor=((rows + 0.1) / GRID, (columns + 0.1) / GRID), mode="bicubic")
    expected = torch.cat([table[:, :1], scaled.permute(0, 2, 3, 1).reshape(1, -1, WIDTH)], dim=1)
    with torch.inference_mode():
        ours = embeddings.interpolate_pos_encoding(tokens, rows * 14, columns * 14)
    assert torch.equal(ours, expected)
    by_size = F.interpolate(patches, size=(rows, columns), mode="bicubic", align_corners=False)
    assert not torch.allclose(scaled, by_size)


def test_maps_keep_the_aspect_at_the_requested_resolution(catalog):
    image = cv2.resize(picture(64, 128), (100, 70))
    detected = detect(catalog, "depth_anything", image)
    assert detected.shape == (64, 91, 3) and len(np.unique(detected)) > 10


def test_installed_files_make_them_available_and_a_missing_one_is_named(catalog, tmp_path):
    assert {"depth_anything", "depth_anything_v2"} <= set(catalog.available())
    assert catalog.needed_files()["depth_anything_v2"] == []
    empty = PreprocessorCatalog(tmp_path)
    assert "depth_anything" not in empty.available()
    for module, relative in (("depth_anything", V1), ("depth_anything_v2", V2)):
        with pytest.raises(UserError) as refused:
            empty.get(module, field="controlnet.args[0].module")
        assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
        assert str(tmp_path / relative) in refused.value.message


def test_a_foreign_file_is_refused_naming_it(tmp_path, depth_anything_files):
    original = dict(depth_anything_files[1])
    path = tmp_path / "depth_anything_vitl14.pth"
    with pytest.raises(UserError, match=r"depth_anything_vitl14\.pth does not hold a Depth Anything checkpoint"):
        depth_anything_network({"conv.weight": torch.zeros(1)}, "module", path, 1)
    with pytest.raises(UserError, match=r"unknown tensor: depth_head\.extra\.weight"):
        depth_anything_network({**original, "depth_head.extra.weight": torch.zeros(1)}, "module", path, 1)
    with pytest.raises(UserError, match=r"published for 12 \(ViT-S/B\) and 24"):
        depth_anything_network({key: value for key, value in original.items()
                                if not key.startswith("pretrained.blocks.11.")}, "module", path, 2)
    original.pop("depth_head.scratch.refinenet2.out_conv.bias")
    with pytest.raises(UserError, match=r"missing tensor: neck\.fusion_stage\.layers\.2\.projection\.bias"):
        depth_anything_network(original, "module", path, 1)


def test_a_file_through_the_catalog_that_is_not_the_network_is_refused(tmp_path):
    path = tmp_path / V2
    path.parent.mkdir()
    save_file({"backbone.conv.weight": torch.zeros(2)}, path)
    with pytest.raises(UserError) as refused:
        detect(PreprocessorCatalog(tmp_path), "depth_anything_v2", picture())
    assert refused.value.status == 422 and str(path) in refused.value.message


@pytest.mark.parametrize("version, stages", [(1, [21, 22, 23, 24]), (2, [5, 12, 18, 24])])
def test_the_published_vit_l_size_is_read_from_the_file(version, stages):
    """depth_anything_vitl14 / depth_anything_v2_vitl: DINOv2 ViT-L/14 (1024 wide, 24 blocks, 16 heads, a 37x37
    table for 518 pixels), neck 256-512-1024-1024, fusion 256; on the meta device, nothing allocated. The model
    card's 335.3M parameters."""
    shapes = original_shapes(width=1024, depth=24, grid=37, neck=(256, 512, 1024, 1024), fusion=256)
    published = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    size = network_size(published, version)
    assert size == {"width": 1024, "depth": 24, "heads": 16, "image_size": 518, "mlp_ratio": 4,
                    "neck": [256, 512, 1024, 1024], "fusion": 256, "head_hidden": 32, "stages": stages}
    with torch.device("meta"):
        built = build_network(size)
    assert {key: value.shape for key, value in mapped_state(published).items()} == \
        {key: value.shape for key, value in built.state_dict().items()}
    assert round(sum(parameter.numel() for parameter in built.parameters()) / 1e5) == 3353
