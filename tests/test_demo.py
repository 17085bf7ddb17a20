"""`make demo` as a new user runs it: every sample photo gets a right top label, and the output says where it went."""
import re

from pipelines import demo


def test_demo_gets_every_photo_right(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "OUTPUT", tmp_path / "demo-output")
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "7 of 7 photos right" in out and "WRONG" not in out, out
    assert f"Results: {tmp_path}/demo-output/labels/run-" in out and re.search(r"/results-[0-9a-f]{16}\.parquet", out)
    assert "softmax over the labels and 'none of these'" in out
    assert f"Open {tmp_path}/demo-output/report.html in a browser" in out
    assert (tmp_path / "demo-output" / "report.html").read_text().count('<section class="label"') == 7
