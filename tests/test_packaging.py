"""The built distribution carries every module and label file: what Dataflow's --setup_file installs on workers."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from transforms.records import ROW_TYPES, markdown_table

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("transforms", "pipelines", "labels")


def test_wheel_contains_all_packages_and_label_sets(tmp_path):
    # Build from a clean copy: a local build/ or *.egg-info folder would hide a package missing from setup.py.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(source)) for package in PACKAGES for p in (source / package).rglob("*")
               if p.suffix in (".py", ".txt", ".json")}
    assert sources <= names, sorted(sources - names)


def test_the_readme_shows_the_output_rows_as_they_are_defined():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for row_type in ROW_TYPES:
        assert markdown_table(row_type) in readme, row_type.__name__


def test_the_wheel_holds_the_product_not_its_dev_tools(tmp_path):
    """Dev-set builders, the testbed, benchmarks and tests are not installed: what ships is what a job runs."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in (*PACKAGES, "benchmarks", "testbed", "tests"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if not name.split("/")[0].endswith(
        ".dist-info")}
    assert tops == set(PACKAGES)
