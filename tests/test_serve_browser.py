"""Browser end to end: Debian chromium driven by Playwright uploads a real X-ray through the
page served by a real `pneumoscan serve`, and shows what the API says."""

from __future__ import annotations

import httpx
import pytest

from .conftest import EXAMPLES
from .serving import running_server

XRAY = EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("browser") / "server.log") as (url, _):
        yield url


def test_upload_through_the_page_shows_the_api_result(browser, live, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(live)
    assert "Not for clinical use" in page.inner_text("#disclaimer")
    page.set_input_files("#file", str(XRAY))
    page.wait_for_selector("#result[data-state=done]:not([hidden])", timeout=30_000)
    page.wait_for_function("document.getElementById('xray').complete")
    shown = float(page.get_attribute("#probability", "data-value"))
    with XRAY.open("rb") as f:
        api = httpx.post(f"{live}/v1/predict", files={"file": (XRAY.name, f, "image/jpeg")},
                         timeout=30).json()
    assert shown == api["probability"]
    assert page.inner_text("#probability") == f"{api['probability']:.4f}"
    assert page.inner_text("#label") == api["label"]
    assert page.inner_text("#threshold") == f"{api['threshold']:.4f}"
    width = page.eval_on_selector("#fill", "e => e.style.width")
    assert width == f"{100 * api['probability']:.1f}%"
    assert api["etiology"] is None and page.is_hidden("#etiology-line")  # a binary model
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_a_bad_file_gets_a_clear_message(browser, live, tmp_path):
    bad = tmp_path / "scan.jpeg"
    bad.write_bytes(XRAY.read_bytes()[:3000])
    page = browser.new_page()
    page.goto(live)
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = page.inner_text("#error")
    assert "scan.jpeg" in message and "cannot decode" in message
    assert page.is_hidden("#result")


def test_three_class_model_page_shows_the_etiology(browser, etiology_run, small_data, tmp_path):
    with running_server(tmp_path / "server.log", "--model", str(etiology_run.dir)) as (url, _):
        # an X-ray the API calls PNEUMONIA (a tiny run's OOD gate withholds some labels, and
        # an etiology is only given beside a PNEUMONIA label)
        for xray in sorted((small_data / "test" / "PNEUMONIA").glob("*.jpeg")):
            with xray.open("rb") as f:
                api = httpx.post(f"{url}/v1/predict", timeout=30,
                                 files={"file": (xray.name, f, "image/jpeg")}).json()
            if api["label"] == "PNEUMONIA":
                break
        assert api["label"] == "PNEUMONIA"
        page = browser.new_page()
        page.goto(url)
        page.set_input_files("#file", str(xray))
        page.wait_for_selector("#result[data-state=done]:not([hidden])", timeout=30_000)
    assert page.is_visible("#etiology-line")
    assert page.inner_text("#etiology") == api["etiology"] in ("BACTERIAL", "VIRAL")
    assert page.inner_text("#class-probabilities") == "(" + ", ".join(
        f"{k} {v:.3f}" for k, v in api["class_probabilities"].items()) + ")"
    assert page.inner_text("#label") == api["label"]


def test_the_heatmap_lies_over_the_xray_of_a_non_square_original(browser, live):
    """The map is in the model's squashed square geometry: the page must stretch it over the
    X-ray's own box, not letterbox both (which left it off the lungs of a 4:3 original)."""
    xray = EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"  # 1776 x 1416
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(live)
    page.check("#explain")
    page.set_input_files("#file", str(xray))
    page.wait_for_selector("#heatmap:not([hidden])", timeout=30_000)
    page.wait_for_function("document.getElementById('xray').complete"
                           " && document.getElementById('heatmap').complete")
    shown = page.eval_on_selector("#xray", "e => e.getBoundingClientRect().toJSON()")
    heat = page.eval_on_selector("#heatmap", "e => e.getBoundingClientRect().toJSON()")
    assert abs(shown["width"] / shown["height"] - 1776 / 1416) < 0.01  # no letterbox bars
    for key in ("x", "y", "width", "height"):
        assert abs(shown[key] - heat[key]) < 0.5, key
    # Drawn as the API renders it (turbo with its own alpha, as the CLI's overlays and the
    # in-browser site draw it), not faded again by the page (it was opacity .45 + screen).
    style = page.eval_on_selector("#heatmap", "e => { const s = getComputedStyle(e);"
                                  " return [s.opacity, s.mixBlendMode]; }")
    assert style == ["1", "normal"]
