"""Screenshots of the MLflow UI for docs/comparing_runs.md, taken in a real (headless) Chromium.

    python docs/screenshots.py --data /path/to/mnist.npz [--store FOLDER] [--out docs/images]

Runs a small real 2x2 sweep in a temporary folder (or, with --store, uses the mlruns/ of a
folder where such a sweep ran), starts `mlflow server` on its store, drives Chromium over
the DevTools protocol the way a reader clicks through the UI, writes three PNGs into --out
and stops the server and the browser:

    runs_table.png      the runs table: the sweep's parent with its four children expanded,
                        their dataset, models, swept params and scores
    sample_grids.png    the chart view's image grid of the `samples` key at the last epoch,
                        one column per run
    sweep_summary.png   the parent run's description: the best job and the sweep's table

Needs Chromium (Debian: apt-get install chromium) and the websocket-client package. The
clicks find MLflow 3.17's buttons by their labels; another MLflow version may need them
updated.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ganlab import tracking  # noqa: E402

SWEEP = ["-m", "dropout=0.1,0.3", "label_smoothing=0,0.2", "epochs=2", "eval.every=1", "steps_per_epoch=50",
         "eval.num_samples=1000"]
WIDTH, HEIGHT = 1600, 1000
ML_VIEW = "workflowType=machine_learning"  # MLflow 3 opens experiments on GenAI views otherwise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MNIST .npz for the sweep (data.path); default: the Keras cache")
    parser.add_argument("--store", type=Path, help="a folder whose mlruns/ holds a finished sweep: no new sweep")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ganlab-screenshots-") as scratch:
        folder = args.store.resolve() if args.store else Path(scratch)
        if not args.store:
            run_sweep(folder, args.data)
        uri = tracking.default_tracking_uri(folder)
        client, experiment_id = tracking.open_reader(uri, "ganlab")
        parent_id, _ = tracking.sweep_children(client, experiment_id)
        with mlflow_server(uri, folder) as base, Browser(Path(scratch) / "chromium") as browser:
            shoot_runs_table(browser, f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}", args.out / "runs_table.png")
            shoot_sample_grids(browser, f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}&compareRunsMode=CHART",
                               args.out / "sample_grids.png")
            shoot_sweep_summary(browser, f"{base}/#/experiments/{experiment_id}/runs/{parent_id}?{ML_VIEW}",
                                args.out / "sweep_summary.png")
    print(f"screenshots in {args.out}")


def run_sweep(folder: Path, data: str | None) -> None:
    print(f"running the sweep in {folder} (a few minutes)", flush=True)
    overrides = SWEEP + ([f"data.path={Path(data).resolve()}"] if data else [])
    result = subprocess.run([sys.executable, "-m", "ganlab.train", *overrides], cwd=folder, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{result.stderr[-3000:]}")


@contextlib.contextmanager
def mlflow_server(uri: str, folder: Path):
    """`mlflow server` (the server behind `mlflow ui`) on a free local port, one worker; yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job workers
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/health"), "the MLflow server to answer", 180, server)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gave up waiting for {what}: the process ended with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------------- the three pictures


def shoot_runs_table(browser: Browser, url: str, path: Path) -> None:
    """Runs table: expand the sweep's parent, add the swept params and the objective as columns."""
    browser.set_size(1800, HEIGHT)  # room for the param columns, which come last
    browser.open(url, until_text="sweep dropout")
    browser.expand_sweep()
    search = "document.querySelector('input[placeholder=\"Search columns\"]')"
    browser.until(lambda: browser.click(button_with_text("Columns")), f"!!{search}")
    menu = f"(() => {{ let menu = {search}; while (!menu.innerText.includes('Parameters (')) menu = menu.parentElement; return menu; }})()"
    for column in ("Source", "dropout", "label_smoothing", "fid"):  # Source: off, the others: on
        browser.js(f"[...{menu}.querySelectorAll('span')].find(e => e.childElementCount === 0 && e.textContent.trim() === '{column}').click()")
    browser.key("Escape")
    browser.drag("document.querySelector('[aria-colindex=\"2\"] .ag-header-cell-resize')", dx=90)  # room for run names
    time.sleep(1)
    bottom = browser.js("Math.max(...[...document.querySelectorAll('.ag-row')].map(r => r.getBoundingClientRect().bottom))")
    browser.screenshot(path, height=bottom + 50)
    browser.set_size(WIDTH, HEIGHT)


def shoot_sample_grids(browser: Browser, url: str, path: Path) -> None:
    """Chart view: the `samples` image grid at the last epoch, full screen, one column per run."""
    browser.open(url, until_text="Add chart")
    browser.expand_sweep()
    browser.click("document.querySelector('input[placeholder=\"Search metric charts\"]')")
    browser.call("Input.insertText", text="samples")
    card = ("[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')].find(card => "
            "[...card.querySelectorAll('*')].some(e => e.childElementCount === 0 && e.textContent.trim() === 'samples'))")
    browser.wait(f"!!({card})")
    browser.click(f"({card}).querySelector('[data-testid=experiment-view-compare-runs-card-menu]')")
    browser.click("[...document.querySelectorAll('[role=menuitem]')].find(item => item.innerText.trim() === 'Configure')")
    browser.wait("!!document.querySelector('[role=dialog] input[type=number]')")
    browser.type_into("document.querySelector('[role=dialog] input[type=number]')", "2")  # the step: epoch 2
    browser.key("Tab")
    browser.click("[...document.querySelectorAll('[role=dialog] label')].find(label => label.innerText.includes('Show run parameters'))")
    browser.click("[...document.querySelectorAll('[role=dialog] button')].find(b => b.innerText.trim() === 'Save changes')")
    browser.wait("!document.querySelector('[role=dialog]')")
    browser.set_size(WIDTH, 560)  # the full-screen chart fills the window: a low one leaves no empty space
    browser.click(f"({card}).querySelector('button[data-component-id=fullscreen_button_chartcard]')")
    browser.wait("[...document.querySelectorAll('[role=dialog] img')].length >= 4 && "
                 "[...document.querySelectorAll('[role=dialog] img')].every(img => img.complete && img.naturalWidth > 0)")
    browser.screenshot(path)
    browser.set_size(WIDTH, HEIGHT)


def shoot_sweep_summary(browser: Browser, url: str, path: Path) -> None:
    """The parent run's page: its description (best job, the sweep's table), unfolded."""
    browser.open(url, until_text="Best job")
    browser.until(lambda: browser.click(button_with_text("Show more")), "!document.body.innerText.includes('Show more')")
    bottom = browser.js("[...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && "
                        "/^Metrics \\(/.test(e.textContent.trim()))?.getBoundingClientRect().top")
    browser.screenshot(path, height=(bottom or HEIGHT) - 10)


def button_with_text(text: str) -> str:
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim() === '{text}')"


# ---------------------------------------------------------------------------- a small DevTools client


class Browser:
    """Headless Chromium driven over the DevTools protocol: open, wait, click, type, screenshot.

    Elements are named by JavaScript expressions that return one element; `click` sends real
    mouse events at the element's centre, as React's menus expect.
    """

    KEYS = {"Escape": ("Escape", 27), "Tab": ("Tab", 9), "Backspace": ("Backspace", 8)}

    def __init__(self, profile: Path):
        self.profile = profile

    def __enter__(self) -> "Browser":
        import websocket  # the websocket-client package

        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium is None:
            raise SystemExit("no Chromium found: apt-get install chromium")
        shutil.rmtree(self.profile, ignore_errors=True)
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-crash-reporter",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        wait_until(port_file.exists, "Chromium to start", 60, self.process)
        port = port_file.read_text().split()[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(target for target in pages if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.ids = itertools.count(1)
        self.set_size(WIDTH, HEIGHT)
        return self

    def __exit__(self, *error) -> None:
        self.socket.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return None if "exceptionDetails" in result else result["result"].get("value")

    def wait(self, condition: str, timeout: float = 90) -> None:
        wait_until(lambda: self.js(condition), condition, timeout)

    def until(self, action, condition: str, tries: int = 5) -> None:
        """Do `action` until `condition` holds (on a page still loading, the element may be
        missing yet or a click lost)."""
        for _ in range(tries):
            if self.js(condition):
                return
            with contextlib.suppress(LookupError, TimeoutError):
                action()
                self.wait(condition, timeout=10)
                return
        raise TimeoutError(condition)

    def open(self, url: str, until_text: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait(f"document.body && document.body.innerText.includes({json.dumps(until_text)})")
        time.sleep(1)
        self.js("[...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Close')?.click()")  # the assistant's panel

    def expand_sweep(self) -> None:
        """Unfold the parent run's children in the run list."""
        self.until(lambda: self.click("document.querySelector('button[data-component-id*=runnamecellrenderer]')"),
                   "document.body.innerText.includes('dropout=0.3 ls=0.2')")

    def centre(self, element: str) -> tuple[float, float]:
        found = self.js(f"(() => {{ const e = {element}; if (!e) return null; e.scrollIntoView({{block: 'nearest'}});"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if found is None:
            raise LookupError(f"no element: {element}")
        return found[0], found[1]

    def click(self, element: str) -> None:
        x, y = self.centre(element)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        time.sleep(0.5)  # let React render what the click opened

    def drag(self, element: str, dx: float) -> None:
        x, y = self.centre(element)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        for step in range(1, 11):
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * step / 10, y=y, button="left")
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y, button="left", clickCount=1)

    def key(self, name: str, modifiers: int = 0) -> None:
        key, code = self.KEYS[name] if name in self.KEYS else (name, ord(name.upper()))
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key if len(key) > 1 else f"Key{key.upper()}",
                      windowsVirtualKeyCode=code, modifiers=modifiers)

    def type_into(self, element: str, text: str) -> None:
        self.click(element)
        self.key("a", modifiers=2)  # Ctrl+A, then type over it
        self.key("Backspace")
        self.call("Input.insertText", text=text)

    def set_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path, height: float | None = None) -> None:
        """The window, or its top `height` pixels."""
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(height, self.height), "scale": 1} if height else None
        data = self.call("Page.captureScreenshot", format="png", **({"clip": clip} if clip else {}))["data"]
        Path(path).write_bytes(base64.b64decode(data))
        print(f"  {path}", flush=True)


if __name__ == "__main__":
    main()
