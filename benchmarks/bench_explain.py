"""Benchmark: the page `microgpt explain` writes, against its budgets.

On the book's run (1,000 steps, a snapshot every 100 steps: 11 snapshots):

1. The page: at most 1.5 MB, written in under 2 s. Timed as a user runs it, `python -m microgpt
   explain DIR` in a fresh process (imports included), and in-process (reading the run, the
   samples at every snapshot, the graph counts, rendering and the atomic write).
2. In headless Chromium, opened from disk: interactive within 1 s of loading. Measured in the page,
   from the start of navigation to the moment every panel has been drawn (`explainPage.readyAt`).
3. A keystroke in the text box redraws within 50 ms: measured in the page, from the input event to
   the end of the next frame (the forward pass, the table, the bars and the heatmaps, painted),
   beside the same measurement over a frame with nothing to redraw (the browser's frame pacing).

Each figure is the median of several repetitions, printed with its spread and the machine's load.

    python benchmarks/bench_explain.py                 # trains the book's run first (about a second)
    python benchmarks/bench_explain.py --run runs/book  # an existing run (train --out runs/book)
    python benchmarks/bench_explain.py --repeats 9 --keep page.html
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from microgpt.checkpoint import load_checkpoint  # noqa: E402
from microgpt.data import write_atomic  # noqa: E402
from microgpt.explain import page_data, render  # noqa: E402

PAGE_BYTES = 1_500_000
WRITE_SECONDS = 2.0
INTERACTIVE_MS = 1000.0
KEYSTROKE_MS = 50.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Type a name one character at a time, then delete it again: each step is one keystroke's redraw. Before
# each keystroke, the same measurement over a frame with nothing to redraw: the baseline the browser's
# frame pacing alone costs (about one frame, 16.7 ms at 60 Hz), run side by side with the keystrokes.
TYPED = "christopher"
KEYSTROKES = """async (texts) => {
  const box = document.getElementById('text-box');
  const frame = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  const out = [];
  for (const text of texts) {
    await frame();
    let start = performance.now();
    await frame();
    const idle = performance.now() - start;
    start = performance.now();
    box.value = text;
    box.dispatchEvent(new Event('input', {bubbles: true}));
    const handled = performance.now();
    void document.body.offsetHeight;  // style and layout, now rather than at the next frame
    const laidOut = performance.now();
    await frame();
    out.push([handled - start, laidOut - start, performance.now() - start, idle]);
  }
  return out;
}"""


def spread(values: list[float], unit: str, digits: int = 0) -> str:
    return (f"median {statistics.median(values):.{digits}f} {unit} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f}, {len(values)} runs)")


def verdict(ok: bool) -> str:
    return "within budget" if ok else "OVER BUDGET"


def book_run(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "microgpt", "train", "--out", str(folder), "--sample-every", "100",
                    "--quiet"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return folder


def time_writing(run: Path, page: Path, repeats: int) -> tuple[list[float], list[float], int]:
    """Seconds of a fresh `python -m microgpt explain`, seconds in-process, and the page's size."""
    fresh, inside = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "microgpt", "explain", str(run), "-o", str(page)], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        fresh.append(time.perf_counter() - started)
        started = time.perf_counter()
        html = render(page_data(load_checkpoint(run))).encode("utf-8")
        write_atomic(page, html)
        inside.append(time.perf_counter() - started)
    return fresh, inside, page.stat().st_size


def time_browser(page: Path, repeats: int, chromium: str) -> tuple[list[float], ...]:
    """Per load: ms to interactive; per keystroke: ms in the handler, with style and layout, and to the end of
    the next frame (which includes waiting for that frame)."""
    from playwright.sync_api import sync_playwright

    texts = [TYPED[:i] for i in range(1, len(TYPED) + 1)] + [TYPED[:i] for i in range(len(TYPED) - 1, 0, -1)]
    ready, handled, laid_out, painted, idle = [], [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for _ in range(repeats):
                tab = browser.new_page(viewport={"width": 1280, "height": 900})
                tab.goto(page.resolve().as_uri())
                tab.wait_for_selector("body[data-ready]", timeout=60_000)
                ready.append(tab.evaluate("explainPage.readyAt"))  # ms since navigation started
                for a, b, c, d in tab.evaluate(KEYSTROKES, texts):
                    handled.append(a)
                    laid_out.append(b)
                    painted.append(c)
                    idle.append(d)
                tab.close()
        finally:
            browser.close()
    return ready, handled, laid_out, painted, idle


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", metavar="DIR", help="an existing run folder (default: train the book's run)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of each measurement (default: 5)")
    parser.add_argument("--keep", metavar="FILE", help="keep the page written here")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium"),
                        help="the Chromium to drive (default: chromium on the PATH)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else book_run(Path(tmp) / "book")
        page = Path(args.keep) if args.keep else Path(tmp) / "explain.html"
        checkpoint = load_checkpoint(run)
        print(f"run: {run} ({checkpoint.config.num_steps} steps, {len(checkpoint.snapshot_steps())} snapshots); "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

        fresh, inside, size = time_writing(run, page, args.repeats)
        print(f"page size: {size:,} bytes ({size / 1e6:.2f} MB), budget {PAGE_BYTES / 1e6:.1f} MB: "
              f"{verdict(size <= PAGE_BYTES)}")
        print(f"written by `python -m microgpt explain` (fresh process): {spread(fresh, 's', 2)}: "
              f"{verdict(statistics.median(fresh) < WRITE_SECONDS)} ({WRITE_SECONDS:.0f} s)")
        print(f"written in-process (read, sample, count, render, write): {spread(inside, 's', 2)}")

        if not args.chromium:
            print("Chromium not found (--chromium PATH): browser figures skipped")
            return 0
        ready, handled, laid_out, painted, idle = time_browser(page, args.repeats, args.chromium)
        print(f"interactive after loading (headless Chromium): {spread(ready, 'ms')}: "
              f"{verdict(statistics.median(ready) < INTERACTIVE_MS)} ({INTERACTIVE_MS:.0f} ms)")
        print(f"keystroke in the text box, the page's handler: {spread(handled, 'ms', 1)}")
        print(f"keystroke in the text box, handler, style and layout: {spread(laid_out, 'ms', 1)}")
        print(f"keystroke in the text box, to the end of the next frame: {spread(painted, 'ms', 1)}, 95th "
              f"percentile {percentile(painted, 0.95):.1f} ms: {verdict(statistics.median(painted) < KEYSTROKE_MS)} "
              f"({KEYSTROKE_MS:.0f} ms)")
        print(f"baseline, a frame with nothing to redraw: {spread(idle, 'ms', 1)}, 95th percentile "
              f"{percentile(idle, 0.95):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
