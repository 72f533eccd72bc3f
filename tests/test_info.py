"""`maskops info` (maskops/info.py)."""
import json

from maskops import _C, info


def test_info_reports_the_build(capsys):
    assert info.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("available backends:") and "cpu" in line for line in lines)
    assert info.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["extension"]["built"] and report["extension"]["cuda"] == bool(_C.with_cuda)
