"""tritonclient[http] against outpost: the client works unchanged, binary and JSON tensors."""

import gzip
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

DEMO = "vibration-anomaly"


@pytest.fixture()
def client(agent):
    c = httpclient.InferenceServerClient(url=agent)
    yield c
    c.close()


def case(golden, i):
    c = golden["cases"][i]
    x = np.array(c["inputs"][0]["data"], dtype=np.float32).reshape(c["inputs"][0]["shape"])
    y = np.array(c["outputs"][0]["data"], dtype=np.float32).reshape(c["outputs"][0]["shape"])
    return x, y


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "outpost"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness(client):
    assert client.is_model_ready(DEMO)
    assert client.is_model_ready(DEMO, "1")
    assert not client.is_model_ready("broken")
    meta = client.get_model_metadata(DEMO)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "window", "datatype": "FP32", "shape": [1, 3, 256]}] or \
        meta["inputs"][0]["shape"][1:] == [3, 256]
    assert meta["outputs"][0]["name"] == "score"
    yolo = client.get_model_metadata("yolov8n", "3")
    assert yolo["inputs"][0]["shape"][1:] == [3, 320, 320]


def test_repository_index_reports_the_broken_package(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index[DEMO]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "tar" in index["broken"]["reason"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_golden_vectors(client, golden, binary):
    for i in range(len(golden["cases"])):
        x, expected = case(golden, i)
        inp = httpclient.InferInput("window", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("score", binary_data=binary)
        result = client.infer(DEMO, [inp], outputs=[out], request_id=f"r{i}")
        np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-3, atol=1e-4)
        assert result.get_response()["id"] == f"r{i}"
        assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, golden, algorithm):
    x, expected = case(golden, 0)
    inp = httpclient.InferInput("window", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(DEMO, [inp], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-3, atol=1e-4)


def test_default_outputs_and_a_real_detector_with_a_large_binary_output(client):
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("yolov8n", [inp], model_version="3")
    out = result.as_numpy(result.get_response()["outputs"][0]["name"])
    assert out.shape == (1, 22, 2100)  # NudeNet's YOLOv8n: 4 box values + 18 classes
    assert np.isfinite(out).all()


def test_async_infer(client, golden):
    x, expected = case(golden, 1)
    inp = httpclient.InferInput("window", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    pending = [client.async_infer(DEMO, [inp]) for _ in range(8)]
    for p in pending:
        np.testing.assert_allclose(p.get_result().as_numpy("score"), expected, rtol=1e-3, atol=1e-4)


def expect_error(fn, status, needle):
    with pytest.raises(InferenceServerException) as e:
        fn()
    assert str(e.value.status()) == str(status), e.value
    assert needle in e.value.message(), e.value.message()


def test_errors_reach_the_client_with_status_and_message(client):
    x = np.zeros((1, 3, 256), dtype=np.float32)

    def infer(model=DEMO, name="window", arr=x, dtype="FP32", version=""):
        inp = httpclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        return client.infer(model, [inp], model_version=version)

    expect_error(lambda: infer(model="nope"), 404, "unknown model")
    expect_error(lambda: infer(version="9"), 404, "no version `9`")
    expect_error(lambda: infer(name="wrong"), 400, "input `wrong`")
    expect_error(lambda: infer(arr=np.zeros((1, 3, 255), np.float32)), 400, "input `window`: expected shape")
    expect_error(lambda: infer(arr=np.zeros((1, 3, 256), np.float64), dtype="FP64"), 400, "expected datatype FP32")
    expect_error(lambda: infer(model="broken"), 503, "unavailable")
    expect_error(lambda: client.get_model_metadata("nope"), 404, "unknown model")
    # 6 MB of floats is over the agent's 4 MB body limit.
    expect_error(lambda: infer(arr=np.zeros((2000, 3, 256), np.float32)), 413, "limit")


def test_predict_endpoint_runs_the_sensor_pipeline(agent, golden):
    x, expected = case(golden, 0)
    body = json.dumps({"channels": x[0].tolist()}).encode()
    req = urllib.request.Request(f"http://{agent}/v1/models/{DEMO}/predict", data=gzip.compress(body),
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(req) as r:
        answer = json.load(r)
    p = answer["predictions"][0]
    assert p["kind"] == "anomaly"
    assert abs(p["score"] - float(expected[0])) < 1e-3
    bad = urllib.request.Request(f"http://{agent}/v1/models/{DEMO}/predict", data=b'{"channels": [[1, 2]]}')
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad)
    assert e.value.code == 400
    assert "error" in json.load(e.value)


def test_metrics_count_requests_per_model(agent):
    with urllib.request.urlopen(f"http://{agent}/metrics") as r:
        text = r.read().decode()
    assert f'outpost_requests_total{{model="{DEMO}",endpoint="infer"}}' in text
    assert 'outpost_model_ready{model="broken"} 0' in text
