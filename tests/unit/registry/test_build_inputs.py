"""The build-inputs hash a retrain compares with registered versions (svgt.registry.build_inputs)."""

from __future__ import annotations

import dataclasses

import svgt
from svgt.core.params import Params
from svgt.registry.build_inputs import BuildInputs, build_inputs, code_sha256, params_sha256

PARAMS = {"model": {"d_v": 16, "heads": 2}, "train": {"seed": 0}, "registry": {"tracking_uri": "sqlite:///a.db"}}


def test_params_hash_ignores_the_registry_and_key_order_but_nothing_else():
    base = params_sha256(PARAMS)
    moved = {"registry": {"tracking_uri": "http://mlflow:5000"}, "train": {"seed": 0},
             "model": {"heads": 2, "d_v": 16}}
    assert params_sha256(moved) == base
    assert params_sha256({**PARAMS, "train": {"seed": 1}}) != base
    assert params_sha256({**PARAMS, "model": {"d_v": 16, "heads": 4}}) != base
    full = dataclasses.asdict(Params())  # the real params (paths and all) hash without error, stably
    assert params_sha256(full) == params_sha256(dataclasses.asdict(Params()))


def test_code_hash_follows_the_package_sources(tmp_path, monkeypatch):
    package = tmp_path / "svgt"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "encoder.py").write_text("WIDTH = 1\n")
    (package / "notes.txt").write_text("not code")
    monkeypatch.setattr(svgt, "__file__", str(package / "__init__.py"))
    first = code_sha256()
    assert code_sha256() == first
    (package / "notes.txt").write_text("still not code")
    assert code_sha256() == first
    (package / "model" / "encoder.py").write_text("WIDTH = 2\n")
    changed = code_sha256()
    assert changed != first
    (package / "model" / "encoder.py").rename(package / "encoder.py")  # same bytes, another module
    assert code_sha256() not in (first, changed)


def test_every_input_changes_the_combined_hash():
    inputs = build_inputs(PARAMS, data_sha256="d" * 64, backbone_weights_sha256="b" * 64)
    assert inputs.code_sha256 == code_sha256() and inputs.params_sha256 == params_sha256(PARAMS)
    fields = [f.name for f in dataclasses.fields(BuildInputs)]
    variants = {dataclasses.replace(inputs, **{name: "0" * 64}).sha256 for name in fields}
    assert len(variants) == len(fields) and inputs.sha256 not in variants
    assert inputs.tags() == {"inputs_sha256": inputs.sha256, "params_sha256": inputs.params_sha256,
                             "code_sha256": inputs.code_sha256}


def test_checkout_inputs_read_the_data_file_and_backbone_manifest(tmp_path):
    import json

    import pytest

    from svgt.core.io import sha256_file
    from svgt.registry.build_inputs import checkout_build_inputs

    data, backbone = tmp_path / "values.parquet", tmp_path / "backbone"
    with pytest.raises(ValueError, match=r"backbone/manifest.json: cannot read the backbone's weights_sha256"):
        checkout_build_inputs(PARAMS, data, backbone)
    backbone.mkdir()
    (backbone / "manifest.json").write_text(json.dumps({"weights_sha256": "b" * 64}))
    with pytest.raises(ValueError, match=r"values.parquet: cannot hash the canonical data"):
        checkout_build_inputs(PARAMS, data, backbone)
    data.write_bytes(b"rows")
    inputs = checkout_build_inputs(PARAMS, data, backbone)
    assert inputs == build_inputs(PARAMS, data_sha256=sha256_file(data), backbone_weights_sha256="b" * 64)
