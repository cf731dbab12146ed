"""Drive Label Studio's real labeling page in headless Chromium (Playwright), as an annotator does.

The browser is Debian's `chromium` (never a browser Playwright downloads), started with a fresh profile and
with every request that leaves loopback aborted and recorded, so a test can assert the page tried none.
`LabelingPage` knows the selectors of Label Studio 1.23.2's editor: the bottom bar's Auto-Annotation and
Auto-Accept toggles, the smart tools, the labels, the image, and a video's player and box canvas; it clicks
and drags in percent of the image or video frame, reads what the editor holds through `window.Htx`, and what
its canvas draws through Konva (global in the page). `InteractiveLog` records every
`/api/ml/<id>/interactive-annotating` exchange: what the page sent and what Label Studio answered.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
VIEWPORT = {"width": 1400, "height": 1000}
PAGE_TIMEOUT_MS = 30_000
EDITOR_TIMEOUT_MS = 60_000
# Label Studio waits up to 100 s for a backend's answer; the page waits for Label Studio.
ANSWER_TIMEOUT_S = 120.0
# The page sends its request at once after a click or drag.
REQUEST_TIMEOUT_S = 15.0
SETTLE_S = 0.5


# The Konva stage drawing a video's boxes (Konva is global in Label Studio's page).
_VIDEO_STAGE = "Konva.stages.find(s => s.container().closest('.lsf-video__main'))"


class BrowserError(RuntimeError):
    """The page did not reach the expected state in time."""


def is_loopback(url: str) -> bool:
    """True for URLs the page may load: loopback http(s), and in-page schemes (blob:, data:, about:)."""
    parts = urlsplit(url)
    if parts.scheme in {"blob", "data", "about", "chrome-extension"}:
        return True
    return parts.scheme in {"http", "https", "ws", "wss"} and (parts.hostname or "") in LOOPBACK_HOSTS


@dataclass
class Exchange:
    """One interactive-annotating call of the page: the body it posted and Label Studio's JSON answer."""

    request: dict[str, Any]
    answer: dict[str, Any] | None = None

    @property
    def regions(self) -> list[dict[str, Any]]:
        """`context.result` as the page sent it."""
        return self.request.get("context", {}).get("result", [])

    @property
    def result(self) -> list[dict[str, Any]]:
        """The regions of the backend's answer that Label Studio relayed to the page."""
        assert self.answer is not None and "data" in self.answer, f"no successful answer: {self.answer}"
        return self.answer["data"]["result"]


@dataclass
class InteractiveLog:
    """Every interactive-annotating exchange of a page, in order."""

    exchanges: list[Exchange] = field(default_factory=list)


class Chromium:
    """Debian's Chromium under Playwright with a fresh profile; a context refuses non-loopback requests."""

    def __init__(self, artifacts: Path | None = None) -> None:
        from playwright.sync_api import sync_playwright

        if not CHROMIUM.exists():
            raise BrowserError(f"{CHROMIUM} is missing: install Debian's chromium package (make test does)")
        self.refused: list[str] = []  # URLs the page tried to load off loopback
        self._profile = Path(tempfile.mkdtemp(prefix="sam-ls-chromium-"))
        self._playwright = sync_playwright().start()
        try:
            self.context = self._playwright.chromium.launch_persistent_context(
                str(self._profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport=VIEWPORT, timeout=PAGE_TIMEOUT_MS,
            )
        except BaseException:
            self._playwright.stop()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort("blockedbyclient")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.context.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()
        shutil.rmtree(self._profile, ignore_errors=True)


@contextlib.contextmanager
def logged_in_chromium(base_url: str, email: str, password: str) -> Iterator[Chromium]:
    """A Chromium whose context is logged in to the Label Studio at `base_url`; closed on the way out."""
    chromium = Chromium()
    try:
        page = chromium.context.new_page()
        log_in(page, base_url, email, password)  # the cookie serves every page of the context
        page.close()
        yield chromium
    finally:
        chromium.close()


def log_in(page: Any, base_url: str, email: str, password: str) -> None:
    """Log in through Label Studio's login form; the session cookie then serves every page of the context."""
    page.goto(f"{base_url}/user/login/")
    if "/user/login" not in page.url:  # the context's session is already logged in
        return
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation(timeout=PAGE_TIMEOUT_MS):
        page.click("button[type=submit]")
    if "/user/login" in page.url:
        raise BrowserError(f"login as {email} failed: still on {page.url}")


class LabelingPage:
    """One task open in Label Studio's labeling page, with helpers named after what an annotator does."""

    def __init__(self, page: Any, base_url: str, video_name: str = "video") -> None:
        self.page = page
        self.base_url = base_url
        self.video_name = video_name  # the <Video> tag's name, for video tasks
        self.log = InteractiveLog()
        self._pending: list[Exchange] = []
        page.on("request", self._on_request)
        page.on("requestfinished", self._on_finished)

    # --- recording -------------------------------------------------------------------------------------
    def _on_request(self, request: Any) -> None:
        if request.method == "POST" and "/interactive-annotating" in request.url:
            exchange = Exchange(json.loads(request.post_data or "{}"))
            self.log.exchanges.append(exchange)
            self._pending.append(exchange)

    def _on_finished(self, request: Any) -> None:
        if request.method == "POST" and "/interactive-annotating" in request.url:
            body = json.loads(request.post_data or "{}")
            for exchange in self._pending:
                if exchange.request == body:
                    self._pending.remove(exchange)
                    response = request.response()
                    try:
                        exchange.answer = response.json() if response else None
                    except Exception as error:  # a non-JSON answer is recorded as such
                        exchange.answer = {"errors": [f"not JSON: {error}"]}
                    break

    def wait_for_answers(self, count: int, timeout_s: float = ANSWER_TIMEOUT_S) -> list[Exchange]:
        """Wait until `count` exchanges in all have been answered and the editor had time to apply them.

        Fails after REQUEST_TIMEOUT_S when the page has not even sent the `count`-th request.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            exchanges = self.log.exchanges
            if len(exchanges) < count and time.monotonic() > started + REQUEST_TIMEOUT_S:
                break
            if len(exchanges) >= count and all(e.answer is not None for e in exchanges[:count]):
                self.page.wait_for_timeout(SETTLE_S * 1000)
                return exchanges[:count]
            self.page.wait_for_timeout(100)
        raise BrowserError(f"{count} interactive answers expected, got {len(self.log.exchanges)} requests "
                           f"({sum(e.answer is not None for e in self.log.exchanges)} answered) "
                           f"after {time.monotonic() - started:.0f} s")

    # --- opening a task --------------------------------------------------------------------------------
    def open_task(self, project_id: int, task_id: int) -> None:
        """Open the task in the project's data manager and wait for the editor and the image."""
        self.page.goto(f"{self.base_url}/projects/{project_id}/data?task={task_id}")
        self.page.wait_for_function(
            "() => window.Htx && Htx.annotationStore && Htx.annotationStore.selected", timeout=EDITOR_TIMEOUT_MS)
        self.page.wait_for_function(
            "() => { const img = document.querySelector('img[src^=\"blob:\"]');"
            " return img && img.complete && img.naturalWidth > 0; }", timeout=EDITOR_TIMEOUT_MS)

    def open_video_task(self, project_id: int, task_id: int) -> None:
        """Open a video task and wait for the editor, a playable video and the canvas boxes are drawn on."""
        self.page.goto(f"{self.base_url}/projects/{project_id}/data?task={task_id}")
        self.page.wait_for_function(
            "() => window.Htx && Htx.annotationStore && Htx.annotationStore.selected", timeout=EDITOR_TIMEOUT_MS)
        self.page.wait_for_function(
            "() => { const v = document.querySelector('video');"
            f" return !!v && v.readyState >= 2 && !!window.Konva && !!{_VIDEO_STAGE}; }}",
            timeout=EDITOR_TIMEOUT_MS)

    def set_toggle(self, name: str, on: bool) -> None:
        """Set the bottom bar's `auto-annotation` or `auto-accept` toggle."""
        toggle = self.page.locator(f"[data-testid=bottombar-{name}-toggle]")
        toggle.wait_for(timeout=PAGE_TIMEOUT_MS)
        box = toggle.locator("input[type=checkbox]")
        checked = box.is_checked() if box.count() else toggle.is_checked()
        if checked != on:
            toggle.click()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = box.is_checked() if box.count() else toggle.is_checked()
            if now == on:
                return
            self.page.wait_for_timeout(100)
        raise BrowserError(f"the {name} toggle did not turn {'on' if on else 'off'}")

    # --- tools and labels ------------------------------------------------------------------------------
    def smart_tool(self, kind: str) -> None:
        """Pick the smart `key-point` or `rectangle` tool from the toolbar's smart group."""
        self.page.hover(".lsf-toolbar__group .lsf-tool_smart")
        self.page.click(f".lsf-toolbar__smart [aria-label={kind}-tool]")
        self.page.locator(f".lsf-toolbar__smart .lsf-tool_active[aria-label={kind}-tool]").wait_for(timeout=5000)

    def label(self, value: str, block: int | None = None) -> None:
        """Select the label `value` (in the `block`-th labels control when several have it) for the next region.

        Regions are unselected first: a label clicked while a region is selected relabels that region. The
        page unselects the label once a smart region is drawn, so select it again before each click or drag.
        """
        self.unselect_regions()
        scope = self.page.locator(".lsf-labels").nth(block) if block is not None else self.page
        label = scope.locator(".lsf-label", has_text=value).first
        if "lsf-label_selected" not in (label.get_attribute("class") or ""):
            label.click()
        self.page.wait_for_timeout(100)

    def click_label(self, value: str) -> None:
        """Click the label `value` as it is, regions left selected: a selected region takes the label."""
        self.page.locator(".lsf-label", has_text=value).first.click()

    def accept_suggestions(self) -> None:
        """Press the bottom bar's ✓: the pending suggestions become regions, the smart regions are deleted."""
        self.page.click("[data-testid=bottombar-accept-suggestions-button]")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self.suggestions():
                self.page.wait_for_timeout(SETTLE_S * 1000)
                return
            self.page.wait_for_timeout(100)
        raise BrowserError("the suggestions were still pending 10 s after ✓")

    def submit_text(self, text: str) -> None:
        """Type `text` into the TextArea's input and press Enter, as an annotator submits a line."""
        field = self.page.locator("[data-testid=textarea-input]").first
        field.click()
        field.fill(text)
        field.press("Enter")

    def unselect_regions(self) -> None:
        self.page.evaluate("() => Htx.annotationStore.selected.unselectAll?.()")

    def hide_regions(self) -> None:
        """Hide every region, as the eye button of the regions panel does: hidden regions catch no clicks.

        A drag that starts and ends on a region is a click on it for the canvas: it selects the region, and
        the answer then accepted takes the selected region's label (see BROWSER_FINDINGS.md).
        """
        self.page.evaluate("() => Htx.annotationStore.selected.regions.forEach(r => r.hidden || r.toggleHidden())")

    def selected_region_ids(self) -> list[str]:
        """Ids (without Label Studio's '#annotation' suffix) of the selected regions."""
        return self.page.evaluate(
            "() => Htx.annotationStore.selected.selectedRegions.map(r => r.cleanId || r.id.split('#')[0])")

    # --- acting on the image ---------------------------------------------------------------------------
    def _point(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of (x %, y %) of the image as drawn."""
        self.page.locator(".konvajs-content").first.scroll_into_view_if_needed()
        box = self.page.locator('img[src^="blob:"]').first.bounding_box()
        if box is None:
            raise BrowserError("the task's image is not on the page")
        px, py = box["x"] + x * box["width"] / 100, box["y"] + y * box["height"] / 100
        on_canvas = self.page.evaluate(
            "([x, y]) => { const e = document.elementFromPoint(x, y);"
            " return !!e && !!e.closest('.konvajs-content'); }", [px, py])
        if not on_canvas:
            raise BrowserError(f"({x} %, {y} %) -> ({px:.0f}, {py:.0f}) is not on the editor's canvas")
        return px, py

    def click(self, x: float, y: float, negative: bool = False) -> None:
        """Click (x %, y %) of the image; Alt held for a negative click."""
        px, py = self._point(x, y)
        with self._alt(negative):
            self.page.mouse.click(px, py)

    def drag(self, x0: float, y0: float, x1: float, y1: float, negative: bool = False) -> None:
        """Drag from (x0 %, y0 %) to (x1 %, y1 %) of the image in steps; Alt held for a negative drag."""
        ax, ay = self._point(x0, y0)
        bx, by = self._point(x1, y1)
        with self._alt(negative):
            self.page.mouse.move(ax, ay)
            self.page.mouse.down()
            self.page.mouse.move(bx, by, steps=8)
            self.page.mouse.up()

    @contextlib.contextmanager
    def _alt(self, held: bool) -> Iterator[None]:
        if not held:
            yield
            return
        self.page.keyboard.down("Alt")
        try:
            yield
        finally:
            self.page.keyboard.up("Alt")

    # --- acting on a video ------------------------------------------------------------------------------
    def _video_point(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of (x %, y %) of the video frame as the boxes' canvas draws it."""
        point = self.page.evaluate(
            "([x, y, name]) => { const s = " + _VIDEO_STAGE + "; const layer = s.getLayers()[0];"
            " const dims = Htx.annotationStore.selected.names.get(name).ref.current.videoDimensions;"
            " const box = s.container().getBoundingClientRect();"
            " return [box.left + layer.x() + x / 100 * dims.width * layer.scaleX(),"
            "         box.top + layer.y() + y / 100 * dims.height * layer.scaleY()]; }", [x, y, self.video_name])
        return float(point[0]), float(point[1])

    def video_frame_box(self) -> dict[str, float]:
        """The page box ({x, y, width, height}) in which the current frame is drawn."""
        (x0, y0), (x1, y1) = self._video_point(0, 0), self._video_point(100, 100)
        return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}

    def draw_video_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Drag a VideoRectangle from (x0 %, y0 %) to (x1 %, y1 %) of the current frame."""
        ax, ay = self._video_point(x0, y0)
        bx, by = self._video_point(x1, y1)
        self.page.mouse.move(ax, ay)
        self.page.mouse.down()
        self.page.mouse.move(bx, by, steps=8)
        self.page.mouse.up()
        self.page.wait_for_timeout(SETTLE_S * 1000)

    def click_video(self, x: float, y: float) -> None:
        """Click (x %, y %) of the current frame: on a box, that selects it."""
        self.page.mouse.click(*self._video_point(x, y))
        self.page.wait_for_timeout(SETTLE_S * 1000)

    def video_frame(self) -> int:
        """The player's current frame, 1-based."""
        return int(self.page.evaluate("(name) => Htx.annotationStore.selected.names.get(name).frame",
                                      self.video_name))

    def step_forward(self) -> int:
        """Press the player's Step forward button (Label Studio 1.23.2 moves 10 frames, or to the end) and
        return the 1-based frame the video then shows."""
        before = self.video_frame()
        self.page.click("button[aria-label='Step forward']")
        deadline = time.monotonic() + 10
        while self.video_frame() == before and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        if self.video_frame() == before:
            raise BrowserError(f"Step forward left the player on frame {before}")
        self.page.wait_for_timeout(SETTLE_S * 1000)
        return self.video_frame()

    def shown_video_box(self, region_id: str) -> dict[str, Any] | None:
        """The box the canvas draws for region `region_id` (without '#annotation') on the current frame, in
        percent of the frame, with Konva's `visible` and `opacity`; None when no box is drawn for it."""
        return self.page.evaluate(
            "([id, name]) => { const s = " + _VIDEO_STAGE + ";"
            " const node = s.find(n => n.getClassName() === 'Rect' && (n.id() || '').split('#')[0] === id)[0];"
            " if (!node) return null;"
            " const dims = Htx.annotationStore.selected.names.get(name).ref.current.videoDimensions;"
            " return {x: node.x() * 100 / dims.width, y: node.y() * 100 / dims.height,"
            "         width: node.width() * node.scaleX() * 100 / dims.width,"
            "         height: node.height() * node.scaleY() * 100 / dims.height,"
            "         visible: node.isVisible(), opacity: node.opacity()}; }", [region_id, self.video_name])

    # --- reading the editor ----------------------------------------------------------------------------
    def drawn_polygons(self, width: int, height: int,
                       image: str = "image") -> tuple[list[list[bool]], list[list[bool]]]:
        """Which pixels of the width×height image the canvas paints as polygon regions: for each pixel, whether
        its centre is painted (alpha > 0) in a Konva layer drawing a polygon's shape, read back from that
        layer's canvas; and whether its centre is on the canvas at all (the editor's fit crops a few pixels at
        the image's edges). Rows of booleans each. Konva draws each layer on a canvas of its own, so the image
        and other kinds of regions do not count."""
        rows = self.page.evaluate(
            """([name, width, height]) => {
              const image = Htx.annotationStore.selected.names.get(name);
              const lines = image.stageRef.find(n => n.getClassName() === 'Line' && n.name() === '_transformable');
              const layers = [...new Set(lines.map(line => line.getLayer()))].map(layer => {
                const canvas = layer.getCanvas();
                const line = lines.find(l => l.getLayer() === layer);
                return {transform: line.getAbsoluteTransform(), ratio: canvas.getPixelRatio(), width: canvas.width,
                        height: canvas.height,
                        data: canvas.getContext()._context.getImageData(0, 0, canvas.width, canvas.height).data};
              });
              const stage = image.stageRef, transform = stage.getAbsoluteTransform();
              const rows = [];
              for (let r = 0; r < height; r++) {
                let row = '';
                for (let c = 0; c < width; c++) {
                  const local = {x: image.internalToCanvasX((c + 0.5) * 100 / width),
                                 y: image.internalToCanvasY((r + 0.5) * 100 / height)};
                  const on = transform.point(local);
                  if (on.x < 0 || on.y < 0 || on.x >= stage.width() || on.y >= stage.height()) {
                    row += '-';
                    continue;
                  }
                  row += layers.some(layer => {
                    const at = layer.transform.point(local);
                    const x = Math.floor(at.x * layer.ratio), y = Math.floor(at.y * layer.ratio);
                    return x >= 0 && y >= 0 && x < layer.width && y < layer.height
                      && layer.data[(y * layer.width + x) * 4 + 3] > 0;
                  }) ? '1' : '0';
                }
                rows.push(row);
              }
              return rows;
            }""", [image, width, height])
        return [[pixel == "1" for pixel in row] for row in rows], [[pixel != "-" for pixel in row] for row in rows]

    def regions(self) -> list[dict[str, Any]]:
        """The selected annotation's regions, serialized as Label Studio saves them (one dict per result)."""
        return self.page.evaluate(
            "() => { const a = Htx.annotationStore.selected;"
            " return JSON.parse(JSON.stringify(a.serializeAnnotation ? a.serializeAnnotation() : []));}")

    def suggestions(self) -> list[dict[str, Any]]:
        """The pending (not accepted) suggestions' results."""
        return self.page.evaluate(
            "() => { const a = Htx.annotationStore.selected;"
            " return JSON.parse(JSON.stringify(Array.from(a.suggestions.values()).map(s => s.toJSON()))); }")

    def editor_state(self) -> dict[str, Any]:
        """Regions and suggestions, for a failure's artefacts."""
        state: dict[str, Any] = {}
        for name, read in (("regions", self.regions), ("suggestions", self.suggestions)):
            try:
                state[name] = read()
            except Exception as error:  # the page may be gone: record why
                state[name] = f"unreadable: {error}"
        state["exchanges"] = [{"request": e.request, "answer": e.answer} for e in self.log.exchanges]
        return state

    def save_artifacts(self, directory: Path, name: str) -> list[Path]:
        """A screenshot and the editor's state as JSON, for a failed test."""
        directory.mkdir(parents=True, exist_ok=True)
        saved = []
        with contextlib.suppress(Exception):
            shot = directory / f"{name}.png"
            self.page.screenshot(path=str(shot), full_page=True, timeout=10_000)
            saved.append(shot)
        state = directory / f"{name}.json"
        state.write_text(json.dumps(self.editor_state(), indent=1, default=str)[:20_000_000])
        saved.append(state)
        return saved
