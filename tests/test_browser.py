"""The gate inspector in a real browser: JupyterLab + headless Chromium driven by Playwright.

Starts ``jupyter lab`` on 127.0.0.1 over a temporary copy of ``notebooks/`` whose
``05_gate_inspector`` has SMOKE parameters injected (papermill's parameter cell) and points at the
session's tiny AdaFilter run; opens it in Debian's Chromium, runs all cells from the Run menu, steps
to an image with another prediction with the widget's *next* button, and checks that the displayed
prediction and figure changed. Screenshots go to ``tests/artifacts/`` (git-ignored).

Skipped, with the reason, only where ``/usr/bin/chromium`` or the playwright package is missing
(``.ci/run`` installs Chromium with apt-get; ``playwright install`` is never used).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from adafilter_lib.adafilter.gate_record import load_gate_record

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
NOTEBOOK = "05_gate_inspector.ipynb"
TIMEOUT_MS = 120_000  # every browser wait is bounded; kernel start + imports take ~10-30 s on 2 busy cores


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"Chromium is not installed at {CHROMIUM} (.ci/run installs it: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture(scope="module")
def notebook_dir(smoke_run, tmp_path_factory):
    """A copy of notebooks/ whose 05 runs in SMOKE mode on the smoke run's folder (parameters injected, not executed)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    folder = tmp_path_factory.mktemp("lab_notebooks")
    nb = load_notebook_node(str(ROOT / "notebooks" / NOTEBOOK))  # adds the cell metadata papermill expects
    nb = parameterize_notebook(nb, {"SMOKE": True, "RUNS_ROOT": str(smoke_run.parent), "RUN": smoke_run.name})
    nbformat.write(nb, folder / NOTEBOOK)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(notebook_dir, tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 with a random token and throwaway settings; always stopped."""
    home = tmp_path_factory.mktemp("lab_home")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={notebook_dir}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        f"--LabApp.user_settings_dir={home / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI runs as root
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "Jupyter news?" toast over the widget, no network call
    log = open(home / "server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=notebook_dir, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}: {(home / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 90 s: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        server.send_signal(signal.SIGINT)  # Jupyter's own shutdown: stops its kernels, then exits
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the group this test started (start_new_session above)
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    """A Chromium page (fresh profile) with the inspector notebook open; browser always closed."""
    from playwright.sync_api import sync_playwright

    base, token = lab
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=TIMEOUT_MS)
            # The status bar names the kernel only once it runs (Run All before that asks to pick a kernel).
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=TIMEOUT_MS)
            yield page
        finally:
            context.close()


def _first_other_prediction(run_dir: Path) -> tuple[int, str, str]:
    """(id of the first image whose prediction differs from image 0's, image 0's and its predicted class)."""
    index, names = pd.read_csv(run_dir / "gate_index.csv"), load_gate_record(run_dir).class_names
    other = index.index[index.prediction != index.prediction[0]]
    assert len(other), "the smoke run predicts one class for every image; nothing to switch to"
    return int(other[0]), names[index.prediction[0]], names[index.prediction[other[0]]]


def test_inspector_runs_and_changes_image_in_chromium(page, smoke_run):
    from playwright.sync_api import expect

    target, first_prediction, target_prediction = _first_other_prediction(smoke_run)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()  # Run > Run All Cells
    page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))).click()

    caption, figure = page.locator(".gate-inspector-caption"), page.locator("img.gate-inspector-figure")
    expect(caption.locator(".gi-image")).to_have_text("image 0", timeout=TIMEOUT_MS)
    expect(caption.locator(".gi-prediction")).to_have_text(first_prediction)
    expect(figure).to_have_attribute("src", re.compile(r"."), timeout=TIMEOUT_MS)
    figure.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gate_inspector_before.png"))
    src_before, pixels_before = figure.get_attribute("src"), figure.screenshot()

    for step in range(1, target + 1):  # image-id order: the target is `target` clicks away
        page.locator("button.gate-inspector-next").click()
        expect(caption.locator(".gi-image")).to_have_text(f"image {step}", timeout=TIMEOUT_MS)

    expect(caption.locator(".gi-prediction")).to_have_text(target_prediction)
    assert target_prediction != first_prediction
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=TIMEOUT_MS)  # every callback has finished
    expect(figure).not_to_have_attribute("src", src_before, timeout=TIMEOUT_MS)
    assert figure.screenshot() != pixels_before
    figure.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "gate_inspector.png"))
    page.locator(".gate-inspector").screenshot(path=str(ARTIFACTS / "gate_inspector_widget.png"))  # the whole widget
    assert (ARTIFACTS / "gate_inspector.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
