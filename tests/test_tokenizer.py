from backend.models.tokenizer import build_clip_tokenizer


def test_offline_tokenizer_matches_clip_ids():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    # Ids as produced by openai/clip-vit-large-patch14's tokenizer.
    assert tokenizer("a photo of an astronaut riding a horse on mars").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
    assert tokenizer.convert_ids_to_tokens([320, 49406, 49407, 256]) == ["a</w>", "<|startoftext|>", "<|endoftext|>",
                                                                         "!</w>"]


def test_padding_tokens():
    padded = build_clip_tokenizer()("hello", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[2:] == [49407] * 75
    assert build_clip_tokenizer(pad_token="!").pad_token_id == 0
