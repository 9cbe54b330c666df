"""Notebook 07 in a real browser: JupyterLab started here, the notebook opened in headless Chromium (the Debian
packages chromium and chromium-driver, driven by Selenium; nothing is downloaded), every cell run, a character
drawn on the canvas with mouse events, and the prediction that appears checked against the character drawn.

Set EMNIST_SCREENSHOT=figures/try_it_canvas.png to save the canvas with its prediction (only then, so that ordinary
runs never overwrite the committed picture). Skipped, with the reason, where Chromium, its driver, Selenium or
ipycanvas is missing; .ci/run installs the browser packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from try_it_support import session_model

from emnist_utils import try_it as ti
from emnist_utils.core.paths import PROJECT_ROOT, resolve

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# This machine refuses connections to anywhere but itself: nothing that would try one is left on.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1500,1100")  # fmt: skip
NOTEBOOK = PROJECT_ROOT / "notebooks" / "07_try_it.ipynb"
STEP = 8  # canvas pixels between two mouse positions along a stroke
TIMEOUT = 150  # seconds for the whole browser part (start, run every cell, draw, predict)


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return (f"headless Chromium is not installed ({CHROMIUM} and {CHROMEDRIVER} come from the Debian packages "
                "chromium and chromium-driver; .ci/run installs them when it runs as root)")  # fmt: skip
    for module, what in (("selenium", "selenium"), ("ipycanvas", "ipycanvas"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            return f"{what} is not installed in this environment (pip install -r requirements.txt)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def _jupyter_env(home: Path, cache: Path) -> dict:
    """A JupyterLab of its own: config, settings and runtime under `home`; no news, no update checks, the whole
    notebook kept in the page (no virtual scrolling); the data, profile and model store the tests use."""
    config, settings = home / "config", home / "settings"
    _write_json(config / "jupyter_server_config.json",
                {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                            "expose_app_in_browser": True, "extension_manager": "readonly"}})  # fmt: skip
    _write_json(config / "labconfig" / "page_config.json",
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})  # fmt: skip
    _write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                {"windowingMode": "none"})  # fmt: skip
    _write_json(settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings", {"autosave": False})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER", "PYTEST_"))}
    from helpers import STANDIN_DIR

    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), PYTHONPATH=str(PROJECT_ROOT), EMNIST_DATA=str(STANDIN_DIR),
               EMNIST_SPLIT="standin", EMNIST_PROFILE="smoke", EMNIST_CACHE=str(cache),
               EMNIST_OUTPUT=str(home / "output"), SE_OFFLINE="true")  # fmt: skip
    return env


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within the time limit:\n{log.read_text()[-3000:]}")


def _stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut its kernels down through the server (by id), then the server itself."""
    headers = {"Authorization": f"token {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", headers=headers), timeout=5) as r:
            kernels = json.load(r)
        for kernel in kernels:
            request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", headers=headers, method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _points(stroke, step: int = STEP) -> list[tuple[int, int]]:
    """A stroke's corners with positions every `step` pixels between them, as a mouse moves."""
    points = [tuple(stroke[0])]
    for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
        n = max(1, int(np.hypot(x1 - x0, y1 - y0) // step))
        points += [(round(x0 + (x1 - x0) * t / n), round(y0 + (y1 - y0) * t / n)) for t in range(1, n + 1)]
    return points


def _character_to_draw(model) -> tuple[str, list[list[tuple[int, int]]]]:
    """The first sample character the model reads correctly from exactly the strokes the mouse will draw."""
    read = {}
    for name, strokes in ti.SAMPLE_STROKES.items():
        moved = [_points(s) for s in strokes]
        read[name] = ti.read_picture(model, ti.Sketch.from_strokes(moved).render()).top[0]
        if read[name][0] == name:
            return name, moved
    pytest.fail(f"the model reads none of the sample drawings correctly ({read}); it cannot show the canvas works")


def _draw(driver, canvas, strokes) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    left, top, width, height = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height];", canvas
    )
    scale = width / ti.CANVAS
    actions = ActionChains(driver, duration=10)
    for stroke in strokes:
        position = [round(v * scale) for v in stroke[0]]
        actions.move_to_element_with_offset(canvas, position[0] - round(width / 2), position[1] - round(height / 2))
        actions.click_and_hold()
        for x, y in stroke[1:]:
            target = (round(x * scale), round(y * scale))
            actions.move_by_offset(target[0] - position[0], target[1] - position[1])
            position = list(target)
        actions.release()
    actions.perform()


@needs_browser
def test_draw_on_the_canvas_in_jupyterlab(tmp_path, tmp_path_factory, standin_data):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    found = session_model(tmp_path_factory, standin_data)
    expected, strokes = _character_to_draw(found.model)
    root = tmp_path / "lab"  # a copy of the notebook: JupyterLab may write to what it opens
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), "emnist-test-" + os.urandom(8).hex()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "jupyterlab.log"
    cache = found.store if found.store is not None else tmp_path / "cache"
    deadline = time.monotonic() + TIMEOUT
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=_jupyter_env(tmp_path / "jupyter", cache), stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=root,
        )  # fmt: skip
    driver = None
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", log, deadline)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log")),
                                  options=options)  # fmt: skip
        driver.set_script_timeout(30)
        driver.get(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")

        def until(what: str, condition, poll: float = 0.5):
            while time.monotonic() < deadline:
                value = condition()
                if value:
                    return value
                time.sleep(poll)
            pytest.fail(f"timed out waiting for {what}; JupyterLab log:\n{log.read_text()[-2000:]}")

        def kernel_idle() -> bool:
            return driver.execute_script(
                "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                "return !!(w && w.sessionContext && w.sessionContext.kernelDisplayStatus === 'idle');"
            )

        idle_since = [None]

        def idle_for(seconds: float) -> bool:
            if not kernel_idle():
                idle_since[0] = None
                return False
            idle_since[0] = idle_since[0] or time.monotonic()
            return time.monotonic() - idle_since[0] >= seconds

        until("the notebook's kernel", kernel_idle)
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        canvas = until("the canvas", lambda: next(iter(driver.find_elements(By.CSS_SELECTOR, ".emnist-try-it canvas")),
                                                  None))  # fmt: skip
        panel = driver.find_element(By.CSS_SELECTOR, ".emnist-try-it")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", panel)
        until("the empty canvas's prompt", lambda: "draw a character" in panel.text)
        errors = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type*='error']")
        assert not errors, errors[0].text
        _draw(driver, canvas, strokes)
        # The prediction updates while the strokes arrive; the one to check is the last, once the kernel has
        # handled every mouse event and stayed idle for a moment.
        until("the kernel to handle the strokes", lambda: idle_for(2.0), poll=0.25)
        (tmp_path / "canvas.png").write_bytes(panel.screenshot_as_png)  # kept for a failing run
        shown = until("a prediction", lambda: re.search(r"prediction: (\S+) \((\d+)%\)", panel.text))
        assert shown.group(1) == expected, f"drew '{expected}', the notebook shows '{shown.group(1)}'"
        assert "what the model receives" in panel.text and "Grad-CAM" in panel.text
        screenshot = os.environ.get("EMNIST_SCREENSHOT")
        if screenshot:
            target = resolve(screenshot)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(panel.screenshot_as_png)
    finally:
        if driver is not None:
            driver.quit()
        _stop_server(proc, base, token)


def test_skip_reason_names_what_to_install(monkeypatch):
    """Where the browser is missing, the skip reason (shown by pytest -ra) says which packages bring it."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    reason = _missing()
    assert "chromium and chromium-driver" in reason and ".ci/run" in reason
