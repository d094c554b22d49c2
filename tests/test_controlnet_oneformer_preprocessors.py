"""seg_ofade20k and seg_ofcoco run when the extension's OneFormer files are in models/ControlNetPreprocessor/oneformer/:
transformers' OneFormer sized and filled from the original (detectron2) checkpoint. A tiny OneFormer is written in
the original layout (its module names spelled out here from the original Swin, pixel decoder and transformer
decoder), saved as the original is ({"model": state}), with the training-only tensors the original holds."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.oneformer_network import oneformer_config, oneformer_network, transformers_state
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.controlnet.segmentation_palettes import ADE20K_COLORS, COCO_PANOPTIC_COLORS
from backend.controlnet.weighted_runs import NETWORK_RUNS
from backend.core.errors import UserError
from backend.models.tokenizer import build_clip_tokenizer

FILES = {"ade20k": "oneformer/250_16_swin_l_oneformer_ade20k_160k.pth",
         "coco": "oneformer/150_16_swin_l_oneformer_coco_100ep.pth"}
CLASSES = {"ade20k": 150, "coco": 133}
DEPTHS, HEADS, WINDOW = (1, 1, 2, 1), (1, 2, 2, 4), 4


def tiny_transformers_oneformer(classes: int, seed: int) -> OneFormerForUniversalSegmentation:
    """Swin with 16 channels, 5 queries, 32 hidden; every tensor random (biases and norms too), so a tensor filled
    into the wrong place shows, and the queries' classes sharp enough that a map holds several classes."""
    swin = SwinConfig(embed_dim=16, depths=list(DEPTHS), num_heads=list(HEADS), window_size=WINDOW, drop_path_rate=0.0,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=swin, num_labels=classes, num_queries=5, hidden_dim=32, conv_dim=32,
                             mask_dim=32, encoder_layers=1, encoder_feedforward_dim=48, decoder_layers=3,
                             dim_feedforward=40, query_dec_layers=1, is_training=False, dropout=0.0,
                             output_auxiliary_logits=False)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = OneFormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
        network.model.transformer_module.decoder.class_embed.weight.mul_(5)
    return network


def original_layout(network: OneFormerForUniversalSegmentation, depths=DEPTHS, window=WINDOW, decoder_layers=2,
                    query_layers=1, encoder_layers=1) -> dict[str, torch.Tensor]:
    """The same tensors under the original OneFormer's names (D2SwinTransformer as `backbone`, the deformable pixel
    decoder and the transformer decoder in `sem_seg_head`, `task_mlp`), fused attention projections fused again."""
    ours = {key: value.clone() for key, value in network.state_dict().items()}
    swin, pixel, transformer = ("model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.",
                                "model.transformer_module.")
    original = {}

    def take(original_name, our_name):
        original[original_name] = ours.pop(our_name)

    def take_weight_bias(original_name, our_name, bias=True):
        take(f"{original_name}.weight", f"{our_name}.weight")
        if bias:
            take(f"{original_name}.bias", f"{our_name}.bias")

    def take_fused(original_name, our_names):
        for kind in ("weight", "bias"):
            original[f"{original_name}_{kind}" if "in_proj" in original_name else f"{original_name}.{kind}"] = \
                torch.cat([ours.pop(f"{name}.{kind}") for name in our_names])

    take_weight_bias("backbone.patch_embed.proj", f"{swin}swin.embeddings.patch_embeddings.projection")
    take_weight_bias("backbone.patch_embed.norm", f"{swin}swin.embeddings.norm")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            source = f"backbone.layers.{stage}.blocks.{block}"
            ours_block = f"{swin}swin.encoder.layers.{stage}.blocks.{block}"
            take_weight_bias(f"{source}.norm1", f"{ours_block}.layernorm_before")
            take(f"{source}.attn.relative_position_bias_table",
                 f"{ours_block}.attention.relative_position_bias.relative_position_bias_table")
            take_fused(f"{source}.attn.qkv", [f"{ours_block}.attention.{name}_proj" for name in "qkv"])
            take_weight_bias(f"{source}.attn.proj", f"{ours_block}.attention.o_proj")
            take_weight_bias(f"{source}.norm2", f"{ours_block}.layernorm_after")
            take_weight_bias(f"{source}.mlp.fc1", f"{ours_block}.mlp.fc1")
            take_weight_bias(f"{source}.mlp.fc2", f"{ours_block}.mlp.fc2")
            original[f"{source}.attn.relative_position_index"] = torch.zeros(((2 * window - 1) ** 2,), dtype=torch.long)
        if stage < len(depths) - 1:
            take_weight_bias(f"backbone.layers.{stage}.downsample.reduction",
                             f"{swin}swin.encoder.layers.{stage}.downsample.reduction", bias=False)
            take_weight_bias(f"backbone.layers.{stage}.downsample.norm",
                             f"{swin}swin.encoder.layers.{stage}.downsample.norm")
        take_weight_bias(f"backbone.norm{stage}", f"{swin}hidden_states_norms.stage{stage + 1}")

    decoder = "sem_seg_head.pixel_decoder"
    take(f"{decoder}.adapter_1.weight", f"{pixel}adapter_1.0.weight")  # detectron2's Conv2d with its norm inside
    take_weight_bias(f"{decoder}.adapter_1.norm", f"{pixel}adapter_1.1")
    take(f"{decoder}.layer_1.weight", f"{pixel}layer_1.0.weight")
    take_weight_bias(f"{decoder}.layer_1.norm", f"{pixel}layer_1.1")
    for level in range(3):
        for index in range(2):
            take_weight_bias(f"{decoder}.input_proj.{level}.{index}", f"{pixel}input_projections.{level}.{index}")
    take(f"{decoder}.transformer.level_embed", f"{pixel}level_embed")
    for index in range(encoder_layers):
        layer, ours_layer = f"{decoder}.transformer.encoder.layers.{index}", f"{pixel}encoder.layers.{index}"
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            take_weight_bias(f"{layer}.self_attn.{name}", f"{ours_layer}.self_attn.{name}")
        for original_name, our_name in (("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "self_attn_layer_norm"),
                                        ("norm2", "final_layer_norm")):
            take_weight_bias(f"{layer}.{original_name}", f"{ours_layer}.{our_name}")
    take_weight_bias(f"{decoder}.mask_features", f"{pixel}mask_projection")

    predictor = "sem_seg_head.predictor"
    take(f"{predictor}.query_embed.weight", f"{transformer}queries_embedder.weight")
    take(f"{predictor}.level_embed.weight", f"{transformer}level_embed.weight")
    take_weight_bias(f"{predictor}.decoder_norm", f"{transformer}decoder.decoder_norm")
    take_weight_bias(f"{predictor}.class_input_proj", f"{transformer}decoder.query_input_projection")
    take_weight_bias(f"{predictor}.class_embed", f"{transformer}decoder.class_embed")
    for index in range(3):
        take_weight_bias(f"{predictor}.mask_embed.layers.{index}", f"{transformer}decoder.mask_embed.layers.{index}.0")
    query = f"{transformer}decoder.query_transformer.decoder"
    take_weight_bias(f"{predictor}.class_transformer.decoder.norm", f"{query}.norm")
    for index in range(query_layers):
        layer, ours_layer = f"{predictor}.class_transformer.decoder.layers.{index}", f"{query}.layers.{index}"
        for name in ("linear1", "linear2", "norm1", "norm2", "norm3", "self_attn.out_proj", "multihead_attn.out_proj"):
            take_weight_bias(f"{layer}.{name}", f"{ours_layer}.{name}")
        for name in ("self_attn", "multihead_attn"):
            for kind in ("in_proj_weight", "in_proj_bias"):
                take(f"{layer}.{name}.{kind}", f"{ours_layer}.{name}.{kind}")
    for index in range(decoder_layers):  # the config's decoder_layers - 1
        ours_layer = f"{transformer}decoder.layers.{index}"
        cross = f"{predictor}.transformer_cross_attention_layers.{index}"
        take_weight_bias(f"{cross}.norm", f"{ours_layer}.cross_attn.norm")
        take_weight_bias(f"{cross}.multihead_attn.out_proj", f"{ours_layer}.cross_attn.multihead_attn.out_proj")
        for kind in ("in_proj_weight", "in_proj_bias"):
            take(f"{cross}.multihead_attn.{kind}", f"{ours_layer}.cross_attn.multihead_attn.{kind}")
        own = f"{predictor}.transformer_self_attention_layers.{index}"
        take_weight_bias(f"{own}.norm", f"{ours_layer}.self_attn.norm")
        take_weight_bias(f"{own}.self_attn.out_proj", f"{ours_layer}.self_attn.self_attn.out_proj")
        take_fused(f"{own}.self_attn.in_proj", [f"{ours_layer}.self_attn.self_attn.{name}"
                                                for name in ("q_proj", "k_proj", "v_proj")])
        for name in ("linear1", "linear2", "norm"):
            take_weight_bias(f"{predictor}.transformer_ffn_layers.{index}.{name}", f"{ours_layer}.ffn.{name}")
    for index in range(2):
        take_weight_bias(f"task_mlp.layers.{index}", f"model.task_encoder.task_mlp.layers.{index}.0")
    # what only training reads: the text branch and the loss's class weights
    original["text_encoder.token_embedding.weight"] = torch.randn(49408, 8)
    original["text_projector.layers.0.weight"] = torch.randn(32, 8)
    original["prompt_ctx.weight"] = torch.randn(16, 8)
    original["criterion.empty_weight"] = torch.ones(network.config.num_labels + 1)
    assert set(ours) == {"model.pixel_level_module.encoder.swin.layernorm.weight",
                         "model.pixel_level_module.encoder.swin.layernorm.bias",
                         "criterion.logit_scale", "criterion.empty_weight"}, sorted(ours)  # nothing else left out
    return original



@pytest.fixture(scope="session")
def oneformer_files(tmp_path_factory):
    """Both files, tiny (about 2 MB each), in the extension's downloads/ layout."""
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    networks = {}
    for seed, (dataset, relative) in enumerate(FILES.items()):
        networks[dataset] = tiny_transformers_oneformer(CLASSES[dataset], seed)
        path = folder / "downloads" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": original_layout(networks[dataset]), "iteration": 7}, path)
    return folder, networks


@pytest.fixture(scope="module")
def catalog(oneformer_files):
    return PreprocessorCatalog(oneformer_files[0])


def picture(height=64, width=64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (90, 160, 230)  # sky
    cv2.circle(image, (width // 3, 2 * height // 3), height // 4, (40, 180, 60), thickness=-1)
    cv2.rectangle(image, (width // 2, height // 3), (width - 6, height - 6), (200, 40, 40), thickness=-1)
    return image


def detect(catalog, module, image, resolution=64):
    preprocessor = catalog.get(module)
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, None, None))


def expected_map(network, image, resolution, test_size, palette) -> np.ndarray:
    """transformers' model on the extension's input, then detectron2's semantic post-processing and the palette,
    written out here: an image already at the resolution (a multiple of 64: no pad) scaled to the test size (PIL
    bilinear), normalise, pad to 32; masks to the padded size, cropped, to the map size; classes x masks; argmax."""
    map_height, map_width = image.shape[:2]
    assert min(map_height, map_width) == resolution and map_height % 64 == map_width % 64 == 0  # kept as it is
    factor = test_size / min(map_height, map_width)
    size = (int(map_height * factor + 0.5), int(map_width * factor + 0.5))
    pixels = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)).astype(np.float32)
    pixels = (pixels - [123.675, 116.280, 103.530]) / [58.395, 57.120, 57.375]
    padded = np.zeros((-(-size[0] // 32) * 32, -(-size[1] // 32) * 32, 3), np.float32)
    padded[: size[0], : size[1]] = pixels
    tokens = build_clip_tokenizer()("The task is semantic", padding="max_length", max_length=77)
    task = torch.tensor(tokens["input_ids"]) * torch.tensor(tokens["attention_mask"])
    with torch.inference_mode():
        outputs = network(pixel_values=torch.from_numpy(padded).permute(2, 0, 1)[None], task_inputs=task[None])
        masks = torch.nn.functional.interpolate(outputs.masks_queries_logits, size=padded.shape[:2], mode="bilinear")
        masks = torch.nn.functional.interpolate(masks[:, :, : size[0], : size[1]], size=(map_height, map_width),
                                                mode="bilinear")
        classes = outputs.class_queries_logits.softmax(-1)[0, :, :-1]
        scores = (classes[:, :, None, None] * masks[0].sigmoid()[:, None]).sum(0)
    return np.array(palette, np.uint8)[scores.argmax(0).numpy()]


def test_the_task_is_tokenised_as_the_original_does(catalog):
    """The original's CLIP SimpleTokenizer (open_clip's, the same) makes these ids of "The task is semantic"."""
    path = catalog.weights_dir / "downloads" / FILES["ade20k"]
    segmenter = catalog.networks.get((path,), NETWORK_RUNS["oneformer_ade20k"].build, sized_by_file=True)
    assert segmenter.task_inputs.tolist() == [49406, 518, 10549, 533, 29119, 1550, 49407] + [0] * 70


@pytest.mark.parametrize(("module", "dataset", "test_size", "palette"),
                         [("seg_ofade20k", "ade20k", 512, ADE20K_COLORS),
                          ("seg_ofcoco", "coco", 640, COCO_PANOPTIC_COLORS)])
def test_oneformer_maps_are_transformers_model_coloured_with_the_palette(catalog, oneformer_files, module, dataset,
                                                                         test_size, palette):
    network = oneformer_files[1][dataset]
    image = picture()
    detected = detect(catalog, module, image)
    assert detected.shape == (64, 64, 3) and detected.dtype == np.uint8
    assert np.array_equal(detected, expected_map(network, image, 64, test_size, palette))
    colours = {tuple(colour) for colour in detected.reshape(-1, 3)}
    assert colours <= set(palette) and len(colours) >= 2  # several classes, each drawn in its colour


def test_the_network_holds_the_files_weights_and_its_size(catalog, oneformer_files):
    """Read back through the mapping, every tensor equals the one written in the original layout."""
    path = catalog.weights_dir / "downloads" / FILES["ade20k"]
    segmenter = catalog.networks.get((path,), NETWORK_RUNS["oneformer_ade20k"].build, sized_by_file=True)
    loaded, written = segmenter.network.state_dict(), oneformer_files[1]["ade20k"].state_dict()
    compared = [key for key in written if ".swin.layernorm." not in key and not key.startswith("criterion.")]
    assert len(compared) > 200 and all(torch.equal(loaded[key], written[key]) for key in compared)
    config = segmenter.network.config
    assert (config.num_labels, config.num_queries, config.hidden_dim, config.decoder_layers, config.query_dec_layers,
            config.encoder_layers, config.num_attention_heads) == (150, 5, 32, 3, 1, 1, 8)
    assert (config.backbone_config.embed_dim, config.backbone_config.depths, config.backbone_config.num_heads,
            config.backbone_config.window_size) == (16, list(DEPTHS), list(HEADS), WINDOW)


def test_maps_keep_the_aspect_at_the_requested_resolution(catalog):
    image = cv2.resize(picture(64, 128), (100, 70))
    assert detect(catalog, "seg_ofade20k", image).shape == (64, 91, 3)


def test_installed_oneformer_files_make_them_available(catalog, tmp_path):
    assert {"seg_ofade20k", "seg_ofcoco"} <= set(catalog.available())
    assert catalog.needed_files()["seg_ofade20k"] == []
    empty = PreprocessorCatalog(tmp_path)
    assert "seg_ofade20k" not in empty.available()
    with pytest.raises(UserError) as refused:
        empty.get("seg_ofcoco", field="controlnet.args[0].module")
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
    assert str(tmp_path / FILES["coco"]) in refused.value.message


def test_a_file_that_is_not_a_oneformer_checkpoint_is_refused_naming_it(tmp_path, oneformer_files):
    original = original_layout(oneformer_files[1]["coco"])
    with pytest.raises(UserError, match=r"x\.pth does not hold an original OneFormer"):
        oneformer_network({"conv.weight": torch.zeros(1)}, "module", tmp_path / "x.pth")
    with pytest.raises(UserError, match=r"unknown tensor: sem_seg_head\.extra\.weight"):
        oneformer_network({**original, "sem_seg_head.extra.weight": torch.zeros(1)}, "module", tmp_path / "x.pth")
    original.pop("sem_seg_head.predictor.decoder_norm.bias")
    with pytest.raises(UserError, match=r"missing tensor: .*decoder_norm\.bias"):
        oneformer_network(original, "module", tmp_path / "x.pth")


@pytest.mark.parametrize(("dataset", "queries"), [("ade20k", 250), ("coco", 150)])
def test_the_published_swin_l_size_is_read_from_the_file(dataset, queries):
    """The published files' size (the extension's swin_large configs), on the meta device: nothing allocated."""
    swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    published = OneFormerConfig(backbone_config=swin, num_labels=CLASSES[dataset], num_queries=queries,
                                is_training=False, output_auxiliary_logits=False)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = OneFormerForUniversalSegmentation(published)
    original = original_layout(network, depths=(2, 2, 18, 2), window=12, decoder_layers=9, query_layers=2,
                               encoder_layers=6)
    config = oneformer_config(original)
    assert (config.num_labels, config.num_queries, config.hidden_dim, config.conv_dim, config.mask_dim,
            config.decoder_layers, config.query_dec_layers, config.encoder_layers, config.encoder_feedforward_dim,
            config.dim_feedforward, config.num_attention_heads, config.task_seq_len) == (
        CLASSES[dataset], queries, 256, 256, 256, 10, 2, 6, 1024, 2048, 8, 77)
    backbone = config.backbone_config
    assert (backbone.embed_dim, backbone.depths, backbone.num_heads, backbone.window_size, backbone.mlp_ratio) == (
        192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 4.0)
    state, left = transformers_state(original)
    expected = {key: value.shape for key, value in network.state_dict().items()
                if ".swin.layernorm." not in key and not key.startswith("criterion.")}
    assert not left and {key: value.shape for key, value in state.items()} == expected
