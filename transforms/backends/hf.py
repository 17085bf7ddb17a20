"""The `hf` backend: open-weights aligned models through transformers, on CPU or GPU: CLIP-family models (CLIP,
SigLIP, SigLIP 2: `get_image_features` / `get_text_features`), or an image tower with a separate sentence-transformers
text tower that shares its space (Nomic Embed Vision + Nomic Embed Text). The model's own processor and tokenizer
decide image size, crop, normalization and text padding."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from transforms import internals
from transforms.backends.base import Backend, Embedder, ModelInputs, l2_normalize, option, stack_inputs
from transforms.backends.hf_folder import (
    ModelFolderError,
    check_safetensors,
    model_config,
    model_folder,
    weights_digest,
)
from transforms.backends.hf_runtime import RUNTIMES, image_features, onnx_image_tower, pooled
from transforms.faults import one_line

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# Nomic's guidance for text-to-image retrieval: the text tower reads queries with this prefix.
NOMIC_TEXT_PREFIX = "search_query: "


def install_command(extra: str, package: str = "beam-zero-shot-labels") -> str:
    """The pip command that adds `extra` to the package the way it was installed here (pip records where from, PEP
    610): from a checkout, a built file or a git URL, or by name from a package index."""
    try:
        origin = json.loads(metadata.distribution(package).read_text("direct_url.json") or "null")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        origin = None
    if not origin:
        return f"pip install '{package}[{extra}]'"
    url = origin["url"]
    if "vcs_info" in origin:
        return f"pip install '{package}[{extra}] @ {origin['vcs_info']['vcs']}+{url}'"
    path = url.removeprefix("file://")
    editable = "-e " if origin.get("dir_info", {}).get("editable") else ""
    return f"pip install {editable}'{path if url.startswith('file://') else url}[{extra}]'"


@functools.lru_cache(maxsize=8)
def tokenizer(folder: str, trust_remote_code: bool = False):
    """The model's own tokenizer, as transformers loads it from the folder; once per process."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - its files are missing, or this transformers cannot read them
        missing = "" if (Path(folder) / "tokenizer.json").exists() else ": no tokenizer.json"
        raise ModelFolderError(f"{folder!r} has no tokenizer transformers can load{missing} ({one_line(e)})") from None


@functools.lru_cache(maxsize=8)
def image_processor(folder: str, trust_remote_code: bool = False):
    """The model's image processor, as transformers loads it from whatever the folder holds (preprocessor_config.json,
    or processor_config.json as Processor.save_pretrained writes it; fast or slow classes); once per process."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # not its notice that without torchvision it takes the PIL path
    try:
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a folder without a processor, or one this transformers cannot read
        raise ModelFolderError(f"{folder!r} has no image processor transformers can load ({one_line(e)})") from None
    finally:
        transformers_logging.set_verbosity(verbosity)


def _sides(value: Any) -> list[int]:
    """The pixel sizes in a processor's `size` or `crop_size`: an int, a dict, or transformers 5's SizeDict."""
    if isinstance(value, int):
        return [value]
    items = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value or {})
    return [side for name, side in items.items() if isinstance(side, int) and name != "longest_edge"]


def image_side(processor) -> int:
    """The shorter side `processor` reads: its resize target, or its crop if larger; for SigLIP 2's NaFlex
    processors, which keep the aspect and read up to max_num_patches patches, the side of that many square ones."""
    if patches := getattr(processor, "max_num_patches", None):
        return math.isqrt(patches) * processor.patch_size
    return max(_sides(getattr(processor, "size", None)) + _sides(getattr(processor, "crop_size", None)), default=224)


class HFEmbedder(Embedder):
    """A transformers model in this process: images through its image processor and image features, texts through
    its tokenizer and text features, or through a separate sentence-transformers text tower."""

    def __init__(self, settings: "HFBackend"):
        import torch
        import transformers
        from transformers import AutoModel

        self.torch = torch
        self.model_id = settings.model_id
        self.dim = settings.embedding_dim
        self.device = settings.resolved_device
        self.dtype = getattr(torch, settings.dtype)
        folder = model_folder(settings.model, settings.revision)
        trust = settings.trust_remote_code
        # The class the folder names (CLIPVisionModelWithProjection keeps its projection; AutoModel would drop it),
        # else whatever AutoModel maps its config to (remote code included, when trusted).
        named = (model_config(folder).get("architectures") or [None])[0]
        model_class = getattr(transformers, named, None) if named else None
        self.model = (model_class or AutoModel).from_pretrained(folder, trust_remote_code=trust, dtype=self.dtype)
        self.model.to(self.device)
        self.model.eval()
        self.image_inputs = settings.image_inputs
        self.onnx = None
        if settings.resolved_runtime != "torch":
            side, noise = settings.image_side, np.random.default_rng(0)
            probes = [Image.fromarray(noise.integers(0, 256, (side, side + 37 * i, 3), dtype=np.uint8)) for i in (0, 1)]
            pixels = stack_inputs([self.image_inputs(probe) for probe in probes])["pixel_values"]
            self.onnx = onnx_image_tower(self.model, weights_digest(folder), pixels, settings.resolved_runtime)
            if self.onnx is None and settings.runtime != "auto":  # asked for, and its vectors would be another's
                raise RuntimeError(f"--hf_runtime {settings.runtime} cannot run this model (see the warning above)")
        self.siglip = model_config(folder).get("model_type", "").startswith("siglip")
        self.text_prefix = settings.text_prefix
        if settings.text_model:
            from sentence_transformers import SentenceTransformer

            self.text_tower = SentenceTransformer(model_folder(settings.text_model, settings.revision),
                                                  device=self.device, trust_remote_code=trust)
        else:
            self.text_tower = None
            self.tokenizer = tokenizer(folder, trust)
        if hasattr(self.model, "logit_scale") and not settings.text_model:
            self.logit_scale = float(self.model.logit_scale.detach().exp())
        if hasattr(self.model, "logit_bias") and not settings.text_model:
            self.logit_bias = float(self.model.logit_bias.detach())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = [self.text_prefix + text for text in texts]
        if self.text_tower is not None:
            return l2_normalize(self.text_tower.encode(texts, convert_to_numpy=True))
        # SigLIP was trained on texts padded to the tokenizer's maximum length; CLIP pools at the end token.
        inputs = self.tokenizer(texts, padding="max_length" if self.siglip else True, truncation=True,
                                return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            return l2_normalize(pooled(self.model.get_text_features(**inputs)).float().cpu().numpy())

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_inputs(stack_inputs([self.image_inputs(image) for image in images]))

    def embed_inputs(self, inputs: ModelInputs) -> np.ndarray:
        if self.onnx is not None:
            return l2_normalize(self.onnx.features(inputs["pixel_values"]))
        inputs = {name: self.torch.from_numpy(value).to(self.device) for name, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with self.torch.inference_mode():
            vectors = image_features(self.model, inputs)
        return l2_normalize(vectors.float().cpu().numpy())


@dataclasses.dataclass(frozen=True)
class HFBackend(Backend):
    """Open-weights aligned models (CLIP, SigLIP, Nomic Embed) through transformers, on CPU or GPU."""

    model: Optional[str] = option(None, "(required) the model: a Hugging Face hub id, a local folder, or a gs:// or "
                                        "s3:// folder (copied once per worker)")
    text_model: Optional[str] = option(None, "a separate sentence-transformers text tower sharing the image "
                                             "model's space (nomic-ai/nomic-embed-text-v1.5 for Nomic Embed Vision)")
    revision: Optional[str] = option(None, "hub revision (a branch, tag or commit) of --hf_model and --hf_text_model")
    trust_remote_code: bool = option(False, "run the model's own Python code from its folder (Nomic Embed needs "
                                            "it): only for models you trust")
    device: str = option("auto", "where the model runs (auto: cuda when a GPU is there)", choices=list(DEVICES),
                         affects_results=False)
    dtype: str = option("float32", "weights and activations (float16 or bfloat16 halve memory on GPUs)",
                        choices=list(DTYPES))
    # docs/BENCHMARKS.md: on CPU, ONNX Runtime runs the image tower faster than eager PyTorch with the same vectors
    # (checked on every load); int8 is faster still, and its vectors differ (another model id).
    runtime: str = option("auto", "where the image tower runs: auto (on CPU, ONNX Runtime when its vectors match "
                                  "PyTorch's within 1e-4, else PyTorch; on GPUs PyTorch), torch, onnx, or onnx-int8 "
                                  "(dynamic int8: faster, vectors not the same)", choices=list(RUNTIMES),
                          affects_results=False)
    # Beam's share_model_across_processes: a GPU's memory holds one copy, and on CPU a large model may need it too.
    share_model: str = option("auto", "one copy of the model per machine, which every SDK process of the machine "
                                      "sends its batches to, each process preparing its own images: auto (on GPUs), "
                                      "on or off", choices=["auto", "on", "off"], affects_results=False)
    text_prefix: Optional[str] = option(None, "put before every label text (default: 'search_query: ' for Nomic "
                                              "text towers, else none)")
    name = "hf"
    logit_scale = 100.0  # CLIP's convention, for models that learned none (a separate text tower)
    default_templates = "photo"

    def __post_init__(self):
        if self.text_prefix is None:  # the dataclass is frozen: settle the default once, visibly in settings
            nomic = "nomic" in (self.text_model or "").lower()
            object.__setattr__(self, "text_prefix", NOMIC_TEXT_PREFIX if nomic else "")

    @property
    def folder(self) -> str:
        if not self.model:
            raise ModelFolderError("--backend hf needs --hf_model: a hub id, a local folder or a gs:// or s3:// one")
        return model_folder(self.model, self.revision)

    @property
    def model_id(self) -> str:
        model_id = f"hf:{self.model}@{weights_digest(self.folder)[:16]}"
        if self.text_model:
            model_id += f"+{self.text_model}@{weights_digest(model_folder(self.text_model, self.revision))[:16]}"
        model_id += "" if self.dtype == "float32" else f"-{self.dtype}"
        return model_id + ("-int8" if self.runtime == "onnx-int8" else "")  # its vectors differ; onnx's do not

    @property
    def embedding_dim(self) -> int:
        config = model_config(self.folder)
        vision = config.get("vision_config", config)
        return int(config.get("projection_dim") or vision.get("projection_dim") or vision.get("hidden_size")
                   or config.get("n_embd"))

    @property
    def image_side(self) -> int:
        return image_side(image_processor(self.folder, self.trust_remote_code))

    @property
    def resolved_runtime(self) -> str:
        """torch, onnx or onnx-int8: `runtime` with auto settled. ONNX Runtime runs only on the CPU, in float32, and
        for processors of one image size (not SigLIP 2's NaFlex, whose inputs vary per batch)."""
        if self.runtime != "auto":
            return self.runtime
        fixed_size = not getattr(image_processor(self.folder, self.trust_remote_code), "max_num_patches", None)
        return "onnx" if self.resolved_device == "cpu" and self.dtype == "float32" and fixed_size else "torch"

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def default_batch_size(self) -> int:
        return 256 if self.resolved_device == "cuda" else 16

    @property
    def share_model_across_processes(self) -> bool:
        return self.share_model == "on" or (self.share_model == "auto" and self.resolved_device == "cuda")

    def unload(self) -> None:
        super().unload()
        if self.resolved_device == "cuda":
            import gc

            import torch

            gc.collect()  # the model's tensors go back to torch's cache of GPU memory,
            torch.cuda.empty_cache()  # and from it to the GPU, for the shared copy

    def image_inputs(self, image: Image.Image) -> ModelInputs:
        """What the model reads of one decoded image: its processor's pixels (for NaFlex also their mask and patch
        grid, padded to max_num_patches, so every image's arrays have one shape). For a float16 or bfloat16 model in
        float16: half the bytes to hand to a shared model's process and to the device, and more precision than
        bfloat16 keeps."""
        inputs = image_processor(self.folder, self.trust_remote_code)(images=[image], return_tensors="np")
        inputs = {name: np.asarray(value)[0] for name, value in inputs.items()}
        if self.dtype != "float32":
            inputs["pixel_values"] = inputs["pixel_values"].astype(np.float16)
        return inputs

    def image_preprocessor(self) -> Callable[[Image.Image], ModelInputs]:
        return self.image_inputs

    def check(self, workers_here: bool = True) -> None:
        needed = ("torch", "transformers") + (("sentence_transformers",) if self.text_model else ())
        if missing := [module for module in needed if importlib.util.find_spec(module) is None]:
            raise ModuleNotFoundError(f"it needs {' and '.join(missing)}, which the plain install leaves out: "
                                      f"{install_command('hf')}")
        config = model_config(self.folder)
        weights_digest(self.folder)
        check_safetensors(self.folder)
        if "text_config" not in config and not self.text_model:
            processor_files = ("preprocessor_config.json", "processor_config.json")
            if "vision_config" not in config and not any((Path(self.folder) / n).exists() for n in processor_files):
                raise ModelFolderError(f"{self.model!r} is a text model only ({config.get('model_type')}): --hf_model "
                                       "takes an image-text model, or an image model with --hf_text_model")
            raise ModelFolderError(f"{self.model!r} is an image model only ({config.get('model_type')}): give its "
                                   "text tower with --hf_text_model")
        if self.text_model:
            weights_digest(model_folder(self.text_model, self.revision))
            check_safetensors(model_folder(self.text_model, self.revision))
        else:
            tokenizer(self.folder, self.trust_remote_code)
        image_processor(self.folder, self.trust_remote_code)
        if self.runtime.startswith("onnx") and (self.device == "cuda" or self.dtype != "float32"):
            raise ValueError(f"--hf_runtime {self.runtime} runs float32 on the CPU: with --hf_device {self.device} "
                             f"and --hf_dtype {self.dtype}, use --hf_runtime torch or auto")
        if self.device == "cuda" and workers_here:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--hf_device cuda, but torch sees no CUDA device here")

    def _load(self) -> Embedder:
        with internals.no_progress_bars():
            return HFEmbedder(self)
