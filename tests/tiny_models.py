"""Tiny randomly initialised CLIP and SigLIP models, and a split image tower + sentence-transformers text tower, built
from their configs and saved with `save_pretrained`, as the hub would serve them: what the `hf` backend loads in tests
(no hub here). Each has its own tokenizer (a byte-level BPE trained on a few sentences) and image processor."""
from __future__ import annotations

from pathlib import Path

SIDE = 32  # the image side of every tiny model
CORPUS = ["a photo of a cat", "a photo of a dog", "a red car on the road", "a cup of coffee", "a rocket in space",
          "a flower in the garden", "an astronaut", "a motorcycle", "a china teapot", "animal plant vehicle food"] * 4
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<pad>"]


def _tokenizer(max_length: int, unk: bool = False):
    """A byte-level BPE tokenizer (CLIP's kind) that wraps texts in start and end tokens and pads with <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = SPECIALS + ["<unk>"] * unk  # Gemma's tokenizer class, which SigLIP 2 folders name, needs one
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A {SPECIALS[1]}", special_tokens=[(SPECIALS[0], 0), (SPECIALS[1], 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                                   pad_token=SPECIALS[2], model_max_length=max_length,
                                   **({"unk_token": "<unk>"} if unk else {}))


def _text_config(vocab_size: int, max_length: int, hidden: int = 32) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                pad_token_id=2)


def _vision_config(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=SIDE,
                patch_size=8, **extra)


SAVED_AS = ("image processor", "processor", "auto processor")  # the ways users save a model's preprocessing


def tiny_clip(folder: Path, saved_as: str = "image processor") -> Path:
    """A CLIP model whose preprocessing is saved `saved_as`: its image processor and tokenizer each on their own
    (preprocessor_config.json), as one CLIPProcessor (transformers 5: processor_config.json), or as the processor
    AutoProcessor loads back from such a folder."""
    import torch
    from transformers import AutoProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _tokenizer(16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=_text_config(len(tokenizer), 16), vision_config=_vision_config(),
                                 projection_dim=24)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    model.save_pretrained(folder)
    if saved_as == "image processor":
        image_processor.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
        if saved_as == "auto processor":
            AutoProcessor.from_pretrained(folder).save_pretrained(folder)
    return folder


def tiny_siglip2_naflex(folder: Path) -> Path:
    """A SigLIP 2 model with a NaFlex processor: any aspect ratio, up to 16 patches of 8 pixels."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    tokenizer = _tokenizer(16, unk=True)
    torch.manual_seed(0)
    vision = dict(_vision_config(), num_patches=16)
    vision.pop("image_size")
    model = Siglip2Model(Siglip2Config(text_config=_text_config(len(tokenizer), 16), vision_config=vision)).eval()
    for part in (model, tokenizer, Siglip2ImageProcessor(max_num_patches=16, patch_size=8)):
        part.save_pretrained(folder)
    return folder


def tiny_siglip(folder: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = _tokenizer(16)
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=_text_config(len(tokenizer), 16), vision_config=_vision_config()))
    with torch.no_grad():  # learned values, not the initial ones, so that using them is visible
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.5)
    for part in (model.eval(), tokenizer, SiglipImageProcessor(size={"height": SIDE, "width": SIDE})):
        part.save_pretrained(folder)
    return folder


def tiny_split_towers(folder: Path) -> tuple[Path, Path]:
    """(image tower folder, sentence-transformers text tower folder), both 24-dimensional."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    image = folder / "image"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**_vision_config(projection_dim=24))).eval().save_pretrained(image)
    CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}).save_pretrained(image)
    bert = folder / "bert"
    tokenizer = _tokenizer(16)
    BertModel(BertConfig(**_text_config(len(tokenizer), 16, hidden=24))).eval().save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    text = folder / "text"
    SentenceTransformer(modules=[Transformer(str(bert)), Pooling(24, "mean")], device="cpu").save(str(text))
    return image, text
