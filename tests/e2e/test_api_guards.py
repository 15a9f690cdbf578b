"""Guards on a second server: --api-auth is honoured by our routes, --lowvram is refused clearly."""
import pytest

from .datasets import red_square_set
from .webui import WebUI


@pytest.fixture(scope="module")
def guarded(webui_environment, tmp_path_factory):
    server = WebUI(tmp_path_factory.mktemp("webui-guarded"), extra_args=["--api-auth", "tester:s3cret", "--lowvram"])
    server.auth = "tester:s3cret"
    server.start()
    yield server
    server.stop()


def test_routes_require_the_api_credentials(guarded, tmp_path):
    for method, path in [("GET", "/lora-trainer/v1/jobs"), ("POST", "/lora-trainer/v1/scan"),
                         ("POST", "/lora-trainer/v1/jobs"), ("GET", "/lora-trainer/v1/model"),
                         ("GET", "/lora-trainer/v1/datasets"), ("POST", "/lora-trainer/v1/datasets"),
                         ("POST", "/lora-trainer/v1/datasets/x/import"), ("GET", "/lora-trainer/v1/dataset-jobs/1")]:
        status, _ = guarded.request(method, path, {} if method == "POST" else None, auth="tester:wrong")
        assert status == 401, path
    assert guarded.get("/lora-trainer/v1/jobs") == []
    assert guarded.get("/lora-trainer/v1/datasets") == []


def test_lowvram_is_refused_with_a_clear_message(guarded, tmp_path):
    job = guarded.train({"train_data_dir": str(red_square_set(tmp_path)), "resolution": "64", "min_bucket_reso": 64,
                         "max_bucket_reso": 128, "max_train_steps": 2, "output_name": "lowvram"})
    assert job["state"] == "failed" and "--lowvram" in job["error"]
    assert not (guarded.lora_dir / "lowvram.safetensors").exists()
