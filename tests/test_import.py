"""Importing voting_det registers its data sets and leaves detectron2's defaults alone."""
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_import_registers_without_touching_global_defaults():
    # A fresh interpreter, so that nothing imported by other tests interferes.
    code = textwrap.dedent(
        """
        from detectron2.config import get_cfg
        from detectron2.data import DatasetCatalog, MetadataCatalog
        before = get_cfg().dump()
        assert not any(n.startswith("nt_") for n in DatasetCatalog.list())
        import voting_det
        after = get_cfg().dump()
        assert before == after, "importing voting_det changed detectron2's default config"
        names = set(DatasetCatalog.list())
        expected = {"nt_all"} | {f"nt_fold{k}_{s}" for k in range(3) for s in ("train", "val", "test")}
        expected |= {"nt_real_" + n[3:] for n in expected}
        missing = expected - names
        assert not missing, missing
        assert MetadataCatalog.get("nt_fold0_test").evaluator_type == "nt"
        cfg = get_cfg()
        voting_det.add_voting_config(cfg)
        assert "ULTRASOUND" in cfg.INPUT and "ULTRASOUND" not in get_cfg().INPUT
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")
