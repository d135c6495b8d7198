"""The web app: its JSON API through FastAPI's test client, then the running app on 127.0.0.1 as
a user meets it in a real headless Chromium (Debian's chromium and chromium-driver): drawing
with pointer events, uploading a picture, comparing two runs. Screenshots go to the test's
temporary folder."""

from __future__ import annotations

import concurrent.futures
import io
import json
import select
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, app_server, draw, line, read_answer, render, run, sweep_runs

N = 40  # test digits sent as pictures


@pytest.fixture(scope="module")
def runs(swept_project: Path) -> dict[str, object]:
    """The swept project's store, its parent run and its two child runs."""
    store = f"sqlite:///{swept_project}/mlflow.db"
    (parent,), found = sweep_runs(store, "mnist")
    children = sorted(
        (r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: int(r.data.params["model.hidden_units"]),
    )
    assert len(children) == 2
    return {"store": store, "parent": parent, "children": children}


@pytest.fixture(scope="module")
def client(model_file: Path, runs: dict) -> Iterator:
    from fastapi.testclient import TestClient

    from pipeline.app.server import create_app
    from pipeline.tracking.choose import choose_model

    app = create_app(choose_model(model_file), runs["store"], "http://mlflow.example.invalid")
    with TestClient(app) as test_client:
        yield test_client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def post(client, data: bytes, name: str = "digit.png", content_type: str = "image/png"):
    return client.post("/api/predict", files={"image": (name, data, content_type)})


def test_pictures_of_test_digits_are_read_as_the_originals(
    client, mnist: dict, model_file: Path
) -> None:
    import keras

    answers = []
    for i in range(N):
        kind = "JPEG" if i % 3 == 0 else "PNG"
        buffer = io.BytesIO()
        render(mnist["xt"][i], i).save(buffer, kind)
        got = post(client, buffer.getvalue(), f"d{i}", f"image/{kind.lower()}")
        assert got.status_code == 200, got.text
        answers.append(got.json())
    first = answers[0]
    assert set(first) >= {"digit", "probabilities", "top3", "model", "input"}
    # Ten probabilities, each rounded to 6 decimals: their sum is 1 within 10 x 0.5e-6.
    total = sum(first["probabilities"])
    assert len(first["probabilities"]) == 10 and total == pytest.approx(1, abs=5e-6)
    assert [t["digit"] for t in first["top3"]][0] == first["digit"]
    assert first["input"].startswith("data:image/png;base64,")
    originals = keras.models.load_model(model_file).predict(mnist["xt"][:N], verbose=0)
    agree = np.mean([a["digit"] for a in answers] == originals.argmax(axis=1))
    assert agree >= 0.95, agree


def test_app_and_predict_command_read_a_file_the_same(
    client, mnist: dict, model_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "three.png"
    render(mnist["xt"][7], 7).save(path)
    api = post(client, path.read_bytes()).json()
    cmd = [sys.executable, "-m", "pipeline.predict", "--model", str(model_file), "--json"]
    line = run([*cmd, str(path)], ROOT).stdout.strip().splitlines()[-1]
    assert json.loads(line)["top3"] == api["top3"]


def test_model_is_described(client, model_file: Path) -> None:
    about = client.get("/api/model").json()
    assert about["source"] == "file" and about["path"] == str(model_file)
    assert client.get("/").status_code == 200 and "canvas" in client.get("/").text


def test_bad_inputs_get_4xx_with_a_message_and_the_server_keeps_serving(
    client, mnist: dict, runs: dict
) -> None:
    good = png(render(mnist["xt"][0], 0))
    blank = png(Image.new("L", (200, 200), 255))
    huge = png(Image.new("L", (8000, 5100)))  # 40.8 megapixels in a small file
    cases = {
        "blank": (post(client, blank), 422, "blank"),
        "not an image": (post(client, b"just some notes"), 422, "not an image"),
        "wrong type": (post(client, good, "d.gif", "image/gif"), 415, "image/gif"),
        "too big": (post(client, good + b"\0" * 10 * 2**20), 413, "bytes"),
        "too many pixels": (post(client, huge), 413, "megapixels"),
        "no image field": (client.post("/api/predict", data={"x": "1"}), 422, "image"),
    }
    for case, (response, status, words) in cases.items():
        assert response.status_code == status, (case, response.text)
        assert words in response.text, (case, response.text)
    unknown = "0123456789abcdef0123456789abcdef"
    missing = client.get(f"/compare?runs={unknown},{runs['children'][0].info.run_id}")
    assert missing.status_code == 404 and unknown in missing.text
    assert client.get(f"/runs/{unknown}/figures/confusion_matrix.png").status_code == 404
    child = runs["children"][0].info.run_id
    for path in (
        f"/runs/{child}/figures/..%2F..%2Fmlflow.db",
        f"/runs/{child}/figures/model.keras",
        "/runs/..%2F..%2Fetc/figures/confusion_matrix.png",
        "/compare?runs=../../etc/passwd,abc",
    ):
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert b"root:" not in response.content
    assert client.get("/compare?runs=" + child).status_code == 400
    assert post(client, good).status_code == 200


def test_compare_shows_two_runs_side_by_side(client, runs: dict) -> None:
    a, b = (r.info.run_id for r in runs["children"])
    page = client.get(f"/compare?runs={a},{b}")
    assert page.status_code == 200
    html = page.text
    assert html.count('class="figure"') == 8  # 4 figures x 2 runs
    assert "model.hidden_units" in html and "train.epochs" not in html  # only what differs
    for r in runs["children"]:
        assert r.info.run_name in html
        assert f"http://mlflow.example.invalid/#/experiments/{r.info.experiment_id}" in html
    delta = (
        runs["children"][1].data.metrics["val_accuracy"]
        - runs["children"][0].data.metrics["val_accuracy"]
    )
    assert f"({delta:+.4f})" in html
    figure = client.get(f"/runs/{b}/figures/confusion_matrix.png")
    assert figure.status_code == 200 and figure.content.startswith(b"\x89PNG")
    sweep = client.get(f"/compare?sweep={runs['parent'].info.run_id}")
    assert sweep.status_code == 200 and sweep.text.count('class="figure"') == 8


# The running app in a real browser.


@pytest.fixture(scope="module")
def served(model_file: Path, swept_project: Path, runs: dict) -> Iterator[str]:
    """`python -m pipeline.app` on 127.0.0.1 in the swept project, as a user starts it."""
    log = swept_project / "app.log"
    with app_server("--model", str(model_file), cwd=swept_project, log=log) as url:
        yield url


def test_a_user_draws_uploads_and_compares_in_chromium(
    browser, served: str, runs: dict, mnist: dict, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(served + "/")
    WebDriverWait(driver, 30).until(lambda d: "Model:" in d.find_element(By.ID, "model").text)
    assert "Draw a digit" in driver.find_element(By.ID, "message").text

    draw(driver, [line((140, 45), (140, 235))])
    one = read_answer(driver)
    driver.save_screenshot(str(tmp_path / "one.png"))
    assert one == "1"
    bars = driver.find_elements(By.CSS_SELECTOR, "#bars li")
    assert len(bars) == 10 and "best" in bars[1].get_attribute("class")
    seen = driver.find_element(By.ID, "seen")
    assert driver.execute_script("return arguments[0].naturalWidth", seen) == 28

    driver.find_element(By.ID, "clear").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "message").is_displayed())
    draw(driver, [line((60, 55), (215, 55)) + line((215, 55), (115, 240))[1:]])
    seven = read_answer(driver)
    driver.save_screenshot(str(tmp_path / "seven.png"))
    assert seven == "7"

    driver.find_element(By.ID, "undo").click()
    WebDriverWait(driver, 10).until(
        lambda d: "Draw a digit" in d.find_element(By.ID, "message").text
    )

    picture = tmp_path / "upload.png"
    render(mnist["xt"][1], 1).save(picture)  # a 2
    driver.find_element(By.ID, "file").send_keys(str(picture))
    uploaded = read_answer(driver)
    driver.save_screenshot(str(tmp_path / "upload-page.png"))
    assert uploaded == str(mnist["yt"][1])

    a, b = (r.info.run_id for r in runs["children"])
    driver.get(f"{served}/compare?runs={a},{b}")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return [...document.images].filter(i => i.classList.contains('figure'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    figures = driver.find_elements(By.CSS_SELECTOR, "img.figure")
    driver.save_screenshot(str(tmp_path / "compare.png"))
    assert len(figures) == 8
    widths = {f.size["width"] for f in figures}
    assert len(widths) == 1 and widths.pop() > 100  # one scale for every run's figure


def upload_head(url: str, length: int | None) -> tuple[socket.socket, bytes]:
    """A socket that has sent the headers of a multipart upload to /api/predict (chunked when
    `length` is None), and the multipart preamble still to send."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    preamble = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    framing = f"Content-Length: {length}" if length else "Transfer-Encoding: chunked"
    sock.sendall(
        f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n\r\n".encode()
    )
    return sock, preamble


def status_of(sock: socket.socket) -> tuple[int, str]:
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < 200:
        block = sock.recv(65536)
        if not block:
            break
        answer += block
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_a_40_mb_upload_is_refused_before_it_is_read(served: str) -> None:
    sock, _ = upload_head(served, 40 * 2**20)
    with sock:  # not one byte of the body sent
        status, body = status_of(sock)
    assert status == 413 and "at most" in body

    sock, preamble = upload_head(served, None)
    sent, chunk = 0, preamble + b"\0" * (2**20 - len(preamble))
    with sock:
        while sent < 40 * 2**20:
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the server answered and closed
                break
            sent += len(chunk)
            chunk = b"\0" * 2**20
        status, body = status_of(sock)
    assert status == 413 and "at most" in body, body
    assert sent < 24 * 2**20, f"{sent} bytes sent before the 413"  # 10 MB + socket buffers


def test_health_answers_while_large_pictures_decode(served: str) -> None:
    side = 3900  # 15.2 megapixels of RGBA, under the 16 allowed: the most expensive picture
    big = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    big.paste((255, 255, 255, 255), (side // 3, side // 5, side // 2, side * 4 // 5))
    data = png(big)

    def upload() -> int:
        request = urllib.request.Request(
            f"{served}/api/predict",
            data=b'--b\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        uploads = [pool.submit(upload) for _ in range(4)]
        during = 0  # health answers that came back while every upload was still decoding
        while not any(u.done() for u in uploads):
            with urllib.request.urlopen(f"{served}/health", timeout=10) as response:
                assert json.load(response) == {"status": "ok"}
            during += not any(u.done() for u in uploads)
        assert [u.result() for u in uploads] == [200] * 4
    assert during >= 1, "health waited for the uploads"  # its latency: benchmarks/serve.py


def test_only_the_bound_host_and_png_or_jpeg_are_served(served: str, mnist: dict) -> None:
    request = urllib.request.Request(f"{served}/api/model", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    buffer = io.BytesIO()
    render(mnist["xt"][0], 0).save(buffer, "GIF")
    request = urllib.request.Request(
        f"{served}/api/predict",
        data=b'--b\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + buffer.getvalue() + b"\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 422 and b"(PNG, JPEG)" in refused.value.read()
