"""The built distribution carries every module and label file: what Dataflow's --setup_file installs on workers."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_all_packages_and_label_sets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for top in ("transforms", "pipelines", "labels")
               for p in (REPO / top).rglob("*") if p.suffix in (".py", ".txt") and "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
