"""The "LoRA Trainer" tab in a real browser: headless Debian chromium driven by playwright.

Boots the WebUI in UI mode (tiny SD1.5), fills the form on a tiny red-square set, scans, trains,
watches the progress bar / loss plot, checks the finished result and the file in models/Lora,
then "Send to txt2img". A screenshot of the finished tab goes to $LORA_TRAINER_TEST_OUT (or tmp_path).
Skips when the WebUI harness (conftest), chromium or the playwright package is missing;
playwright never downloads a browser here: it drives /usr/bin/chromium (or $LORA_TRAINER_CHROMIUM).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

from .datasets import red_square_set
from .webui import WebUI

CHROMIUM = os.environ.get("LORA_TRAINER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NAME = "browser_square"


def browser_missing_reason() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"browser test skipped: no chromium at {CHROMIUM} (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "browser test skipped: python package 'playwright' not installed (pip install -r requirements-test.txt)"
    return None


def undotted_webui_dir(webui_dir: Path, root: Path) -> Path:
    """gradio 3.41 answers 403 to every `file=` path with a dot-named part (routes.py: is_dotfile), and the
    harness lives under ~/.cache: the WebUI's own script.js, javascript/*.js (gradioApp, requestProgress,
    switch_to_txt2img…) would not load in a browser. Run it from a copy of its code at a path without dots;
    models/ and repositories/ (the bulk) stay links. Copy, not links: A1111 takes script_path from realpath."""
    if not any(part.startswith(".") for part in webui_dir.resolve().parts):
        return webui_dir
    shadow = root / "stable-diffusion-webui"
    assert not any(part.startswith(".") for part in shadow.resolve().parts), shadow
    big = {"models", "repositories"}
    shutil.copytree(webui_dir, shadow, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) == webui_dir and
                                             (n in big or n in ("cache", "test", "screenshot.png"))])
    for name in big:
        (shadow / name).symlink_to(webui_dir / name, target_is_directory=True)
    return shadow


@pytest.fixture(scope="module")
def ui_webui(webui_environment, tmp_path_factory):
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    t0 = time.time()
    server = WebUI(tmp_path_factory.mktemp("webui-ui-data"), ui=True)
    server.webui_dir = undotted_webui_dir(server.webui_dir, tmp_path_factory.mktemp("webui-code"))
    server.start(timeout=300)
    print(f"\n[browser] WebUI (UI mode) up in {time.time() - t0:.1f}s at {server.url}; log {server.log_path}")
    yield server
    server.stop()


@pytest.fixture
def page(ui_webui, tmp_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, env={**os.environ, "HOME": str(tmp_path)})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(60_000)
            pg.js_errors = []
            pg.on("pageerror", lambda e: pg.js_errors.append(str(e)))
            pg.on("console", lambda m: m.type == "error" and pg.js_errors.append("console: " + m.text))
            yield pg
        finally:
            context.close()


def out_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("LORA_TRAINER_TEST_OUT") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def fill(page, elem_id: str, value):
    """Type into the textarea/input inside a gradio Textbox/Number (gradio listens to `input`)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.dispatch_event("input")
    box.press("Tab")          # blur: gradio Number commits on change/blur too


def wait_for_result(server, page, result, timeout=600, grace=60):
    """Wait for the tab's result; fail fast (with the job) when the server's job ended but the page shows nothing."""
    deadline, ended_at = time.time() + timeout, None
    while time.time() < deadline:
        if result.count():
            return
        jobs = server.get("/lora-trainer/v1/jobs")
        if ended_at is None and jobs and jobs[-1]["state"] in ("finished", "stopped", "failed"):
            ended_at = time.time()
        if ended_at is not None and time.time() - ended_at > grace:
            job = {k: v for k, v in jobs[-1].items() if k != "losses"}
            pytest.fail(f"job ended on the server ({job}) but #lt_result shows nothing after {grace}s; "
                        f"#lt_result: {page.locator('#lt_result').first.inner_html()[:500]!r}")
        page.wait_for_timeout(1000)
    pytest.fail(f"no result in #lt_result after {timeout}s")


# Installed before Start: remembers whether A1111's progress bar was put in front of #lt_progress and the
# texts it showed (the bar is removed again as soon as the task ends, which on a tiny model is quick).
WATCH_PROGRESS = """() => {
  window.__lt = {progressDiv: false, texts: []};
  const target = gradioApp().getElementById('lt_progress');
  new MutationObserver(() => {
    const prev = target.previousElementSibling;
    if (prev && prev.classList.contains('progressDiv')) {
      window.__lt.progressDiv = true;
      const t = prev.innerText.trim();
      if (t && window.__lt.texts[window.__lt.texts.length - 1] !== t) window.__lt.texts.push(t);
    }
  }).observe(target.parentNode, {childList: true, subtree: true, characterData: true});
}"""


def test_tab_trains_in_browser(ui_webui, page, tmp_path):
    server = ui_webui
    data = red_square_set(tmp_path / "data", n=4, size=64, repeats=10, caption="sks square, red square")
    t0 = time.time()
    page.goto(server.url, wait_until="domcontentloaded")
    tab_button = page.locator("#tabs > .tab-nav > button", has_text="LoRA Trainer")
    tab_button.wait_for(state="visible", timeout=120_000)
    page.wait_for_function("() => typeof lora_trainer_start === 'function' && typeof requestProgress === 'function'")
    tab_button.click()
    page.locator("#tab_lora_trainer").wait_for(state="visible")
    page.locator("#lt_train_data_dir").wait_for(state="visible")

    fill(page, "lt_train_data_dir", data)
    fill(page, "lt_output_name", NAME)
    fill(page, "lt_resolution", "64")
    fill(page, "lt_min_bucket_reso", 64)
    fill(page, "lt_max_bucket_reso", 128)
    fill(page, "lt_max_train_epochs", 2)

    # Scan: 4 images × 10 repeats = 40 steps per epoch (batch 1), 80 in all
    page.locator("#lt_scan").click()
    summary = page.locator("#lt_scan_summary #lt_step_count")
    summary.wait_for(state="visible")
    scan_text = page.locator("#lt_scan_summary").first.inner_text()
    print(f"[browser] scan summary: {' '.join(scan_text.split())}")
    assert "Steps per epoch: 40" in summary.inner_text(), scan_text
    assert "total: 80" in summary.inner_text(), scan_text
    assert "sks square" in scan_text

    page.evaluate(WATCH_PROGRESS)
    t_train = time.time()
    page.locator("#lt_start").click()
    result = page.locator("#lt_result [data-state]")
    wait_for_result(server, page, result)
    train_s = time.time() - t_train
    state = result.get_attribute("data-state")
    result_text = page.locator("#lt_result").first.inner_text()
    print(f"[browser] training in the tab took {train_s:.1f}s: {' '.join(result_text.split())}")
    assert state == "finished", result_text + "\n" + server.log_text()[-3000:]
    assert "80/80" in result_text, result_text

    seen = page.evaluate("() => window.__lt")
    loss_d = page.locator("#lt_loss_plot svg path").first.get_attribute("d") if page.locator(
        "#lt_loss_plot svg path").count() else None
    loss_label = page.locator("#lt_loss_plot .lt-loss-label").inner_text()
    print(f"[browser] progress bar seen: {seen['progressDiv']}, texts: {seen['texts'][:3]}…{seen['texts'][-1:]}; "
          f"loss path: {(loss_d or '')[:60]!r}; label: {loss_label!r}")
    assert seen["progressDiv"] or loss_d, "neither the progress bar nor the loss plot showed any progress"
    # the bar is gone after the end (A1111 removes it), the plot stays
    page.wait_for_function("() => !gradioApp().querySelector('#lt_progress').previousElementSibling"
                           "?.classList.contains('progressDiv')", timeout=30_000)

    files = sorted(p.name for p in server.lora_dir.glob(f"{NAME}*.safetensors"))
    assert files, f"no {NAME}*.safetensors in {server.lora_dir}: {os.listdir(server.lora_dir)}"
    assert files[-1] in result_text
    prompt = page.locator("#lt_prompt textarea").input_value()
    assert f"<lora:{files[-1].rsplit('.', 1)[0]}:0.8>" in prompt, prompt

    page.wait_for_timeout(300)
    shot = out_dir(tmp_path) / "lora_trainer_tab_finished.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"[browser] screenshot of the finished tab: {shot}")

    # Send to txt2img: switches tab, prompt carries the <lora:…>
    page.locator("#lt_send_txt2img").click()
    page.locator("#tab_txt2img").wait_for(state="visible")
    page.wait_for_function("() => gradioApp().querySelector('#txt2img_prompt textarea').value.includes('<lora:')",
                           timeout=30_000)
    txt2img_prompt = page.locator("#txt2img_prompt textarea").input_value()
    print(f"[browser] txt2img prompt after Send: {txt2img_prompt!r}")
    assert f"<lora:{files[-1].rsplit('.', 1)[0]}:" in txt2img_prompt
    assert not page.locator("#tab_lora_trainer").is_visible()
    # the end of Start refreshed the Lora cards (lora_trainer.js atEnd): the new LoRA has a card in txt2img
    page.locator("#txt2img_extra_tabs > .tab-nav > button", has_text="Lora").click()
    page.locator(f"#txt2img_lora_cards .card[data-name='{files[-1].rsplit('.', 1)[0]}']").wait_for(
        state="attached", timeout=60_000)

    ours = [e for e in page.js_errors if "lora_trainer" in e or "lt_" in e]
    if page.js_errors:
        print("[browser] console/page errors:\n  " + "\n  ".join(page.js_errors))
    assert not ours, ours
    print(f"[browser] page flow took {time.time() - t0:.1f}s")


def test_dataset_tab_import_tag_edit_in_browser(ui_webui, page, tmp_path):
    """Dataset tab: create a project, import a folder, tag with a WD14 stand-in, add a trigger; check the disk."""
    from PIL import Image
    from ..unit.test_prep_tagger import BLACK_TAGS, RED_TAGS, build_model
    pytest.importorskip("onnx")
    server = ui_webui
    model = build_model(tmp_path / "tiny-wd14", "batch")
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (448, 448), (255, 0, 0)).save(src / "red.png")
    Image.new("RGB", (448, 448), (0, 0, 0)).save(src / "black.jpg", quality=95)
    (src / "broken.png").write_bytes(b"not an image")
    (src / "red_copy.png").write_bytes((src / "red.png").read_bytes())

    page.goto(server.url, wait_until="domcontentloaded")
    tab_button = page.locator("#tabs > .tab-nav > button", has_text="LoRA Trainer")
    tab_button.wait_for(state="visible", timeout=120_000)
    tab_button.click()
    page.locator("#lt_subtabs > .tab-nav > button", has_text="Dataset").click()
    page.locator("#lt_ds_new_name").wait_for(state="visible")

    fill(page, "lt_ds_new_name", "browser set")
    page.locator("#lt_ds_create").click()
    page.locator("#lt_ds_status", has_text="Created").first.wait_for(timeout=60_000)

    fill(page, "lt_ds_source", src)
    page.locator("#lt_ds_import").click()
    summary = page.locator("#lt_ds_import_summary")
    summary.wait_for(timeout=60_000)
    report = page.locator("#lt_ds_import_out").first.inner_text()
    print(f"[browser] import: {' '.join(report.split())}")
    assert "Imported 3 image(s)" in summary.inner_text() and "broken.png" in report

    # an upload goes the same way (gradio hands the temp file over with the name the user chose)
    upload = tmp_path / "upload"
    upload.mkdir()
    Image.new("RGB", (448, 448), (0, 0, 255)).save(upload / "blue.png")
    page.locator("#lt_ds_upload input[type=file]").set_input_files(str(upload / "blue.png"))
    page.locator("#lt_ds_upload", has_text="blue.png").first.wait_for(timeout=60_000)
    page.locator("#lt_ds_import").click()
    page.locator("#lt_ds_import_summary", has_text="uploaded files").wait_for(timeout=60_000)
    assert "Imported 1 image(s)" in page.locator("#lt_ds_import_summary").inner_text()
    images = server.data_dir / "lora-trainer" / "datasets" / "browser set" / "images"
    assert (images / "blue.png").is_file()       # the user's file name, not gradio's temp name
    page.locator("#lt_ds_undo").click()        # and Undo takes the upload back out
    page.locator("#lt_ds_import_out", has_text="Undid").first.wait_for(timeout=60_000)
    assert not (images / "blue.png").exists()

    page.get_by_text("3. Caption", exact=True).click()
    fill(page, "lt_ds_tagger_model", model)
    page.locator("#lt_ds_tag").click()
    page.locator("#lt_ds_caption_summary").wait_for(timeout=120_000)
    tagged = page.locator("#lt_ds_caption_out").first.inner_text()
    print(f"[browser] tagging: {' '.join(tagged.split())}")
    assert "3 caption(s) written" in tagged and "CPUExecutionProvider" in tagged

    # Clean: the exact copy is suggested for the trash, and goes there with its caption
    page.get_by_text("2. Clean", exact=True).click()
    page.locator("#lt_ds_check").click()
    page.locator("#lt_ds_hygiene_summary").wait_for(timeout=120_000)
    suggested = page.locator("#lt_ds_trash_names textarea").input_value()
    assert suggested == "red_copy.png", suggested      # equal copies: the first by name is kept
    page.locator("#lt_ds_trash").click()
    page.locator("#lt_ds_clean_out", has_text="trash").first.wait_for(timeout=60_000)

    page.get_by_text("4. Tags", exact=True).click()
    fill(page, "lt_ds_triggers", "sks, red thing")
    page.locator("#lt_ds_keep_sep input").check()
    page.locator("#lt_ds_apply").click()
    page.locator("#lt_ds_edit_summary").wait_for(timeout=60_000)
    assert "2 caption(s) changed" in page.locator("#lt_ds_edit_summary").inner_text()
    page.locator("#lt_ds_tag_table").first.wait_for(timeout=30_000)
    assert "kagamine rin" in page.locator("#lt_ds_tags_out").first.inner_text()

    assert (images / "red.txt").read_text("utf-8") == "sks, red thing ||| " + ", ".join(RED_TAGS) + "\n"
    assert (images / "black.txt").read_text("utf-8") == "sks, red thing ||| " + ", ".join(BLACK_TAGS) + "\n"
    assert not (images / "broken.png").exists()
    assert sorted(p.name for p in images.iterdir()) == ["black.jpg", "black.txt", "red.png", "red.txt"]

    # Organise: build the N_name folder, hand it to the Train tab, and its scan reads it
    page.get_by_text("5. Organise", exact=True).click()
    fill(page, "lt_ds_concept", "sks thing")
    fill(page, "lt_ds_repeats", 5)
    page.locator("#lt_ds_build").click()
    page.locator("#lt_ds_build_summary").wait_for(timeout=60_000)
    built = page.locator("#lt_ds_built_dir textarea").input_value()
    assert built.endswith("browser set/training") and (Path(built) / "5_sks thing" / "red.txt").is_file()
    page.locator("#lt_ds_use").click()
    page.locator("#lt_train_data_dir").wait_for(state="visible")
    page.wait_for_function("(d) => gradioApp().querySelector('#lt_train_data_dir textarea').value === d", arg=built)
    page.locator("#lt_scan").click()
    page.locator("#lt_scan_summary #lt_step_count").wait_for(timeout=60_000)
    assert "5_sks thing" in page.locator("#lt_scan_summary").first.inner_text()
    page.locator("#lt_subtabs > .tab-nav > button", has_text="Dataset").click()

    shot = out_dir(tmp_path) / "lora_trainer_dataset_tab.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"[browser] screenshot of the dataset tab: {shot}")
    ours = [e for e in page.js_errors if "lora_trainer" in e or "lt_" in e]
    assert not ours, ours
