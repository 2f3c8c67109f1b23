"""The trajectory report (eval/report_trajectories.py, tgrl/evaluation/report.py): the page's structure
from each input kind, the cap, bad inputs (nothing written), and, marked slow, the page as a browser shows it
(headless Chromium: screenshot pixels and the in-page filter)."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tgrl.evaluation.report import build_report
from tgrl.utils import UserError


class Page(HTMLParser):
    """The parts of the page the tests read: articles (with their data- attributes), coloured tokens,
    images, selects, script and external references."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.articles: list[dict[str, str]] = []
        self.tokens: list[str] = []
        self.images: list[str] = []
        self.selects: list[str] = []
        self.external: list[str] = []
        self.svg = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "article":
            self.articles.append(a)
        elif tag == "i" and a.get("class", "").startswith("b"):
            self.tokens.append(a["class"])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "select":
            self.selects.append(a["id"])
        elif tag == "svg":
            self.svg += 1
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])


def problems(synthetic_dir: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in (synthetic_dir / "test.jsonl").read_text().splitlines()[:n]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_samples(synthetic_dir: Path, folder: Path, method: str, n: int = 4) -> Path:
    """An evaluation results folder as run_lmms_eval.py --visual-dependency writes it."""
    folder.mkdir(parents=True)
    rows = []
    for i, p in enumerate(problems(synthetic_dir, n)):
        text = f"<think>red {i}, blue 2</think><answer>{p['answer']}</answer>"
        ends = [7, 10, 11, 12, 13, 18, 19, 20, 28, 36, len(text) - 9, len(text), len(text)]
        images = [str(synthetic_dir / im) for im in p["images"]]
        rows.append(
            {
                "doc_id": i,
                "doc": {"id": p["id"], "question": p["question"], "images_json": json.dumps(images)},
                "target": p["answer"],
                "resps": [[text]],
                "filtered_resps": [[text]],
                "acc": float(i % 2 == 0),
                "fact_acc": 0.0,
                "grounding": [{"token_ends": ends, "s": [0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.5] + [0.0] * 6}],
            }
        )
    write_jsonl(folder / "samples.jsonl", rows)
    (folder / "results.json").write_text(json.dumps({"summary_rows": [{"method": method}]}))
    return folder


def teacher_file(synthetic_dir: Path, path: Path, n: int = 3) -> Path:
    rows = [
        {
            "id": p["id"],
            "teacher": "oracle",
            "sample_idx": 0,
            "text": f"<think>red 1, blue 2</think><answer>{p['answer']}</answer>",
            "kept": i == 0,
            "reject_reason": None if i == 0 else "incorrect",
            "reward": 1.0 if i == 0 else 0.0,
        }
        for i, p in enumerate(problems(synthetic_dir, n))
    ]
    return write_jsonl(path, rows)


def test_page_from_evaluations_and_teacher_trajectories(synthetic_dir, tmp_path) -> None:
    grpo = eval_samples(synthetic_dir, tmp_path / "grpo", "grpo")
    tgrl = eval_samples(synthetic_dir, tmp_path / "tgrl", "tgrl")
    teacher = teacher_file(synthetic_dir, tmp_path / "trajectories.filtered.jsonl")
    out = tmp_path / "report.html"
    counts = build_report(
        [(None, grpo), ("TGRL", tgrl), (None, teacher)], out, problems=[synthetic_dir / "test.jsonl"]
    )
    text = out.read_text()
    page = Page(text)
    assert counts == {"shown": 11, "total": 11, "bytes": len(text.encode())}
    assert [a["data-method"] for a in page.articles].count("TGRL") == 4  # the label names the method
    assert {a["data-method"] for a in page.articles} == {"grpo", "TGRL", "expert (oracle)"}
    assert {a["data-kind"] for a in page.articles} == {"eval", "teacher"}
    assert {a["data-correct"] for a in page.articles} == {"correct", "incorrect"}
    assert page.selects[:4] == ["f-method", "f-kind", "f-correct", "f-sort"]
    # tokens coloured by their s_t bin (3.0 and 0.5: bins 8 and 5); the teacher rows (no model) are plain
    assert page.tokens.count("b8 r") == 8 and page.tokens.count("b5 r") == 8
    assert "rejected: incorrect" in text and "kept" in text
    # self-contained: images inlined (PNG or JPEG data URIs that decode), nothing fetched from the network
    assert len(page.images) == 11 and not page.external and "<link" not in text
    header, data = page.images[0].split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64") and base64.b64decode(data)
    assert page.svg == 1 and "All 11 samples." in text
    grounded = [float(a["data-ground"]) for a in page.articles if a["data-ground"]]
    assert grounded == [pytest.approx(3.5 / 7)] * 8  # mean s_t of the 7 reasoning tokens


def test_training_completions_with_expert_weights(synthetic_dir, tmp_path) -> None:
    p = problems(synthetic_dir, 2)
    tokens = ["<think>", "red", " 1", "</think>", "<answer>", p[0]["answer"], "</answer>", "<|im_end|>"]
    rows = [
        {
            "step": 5,
            "id": q["id"],
            "is_expert": expert,
            "text": "".join(tokens[:-1]),  # the trainer logs the end-of-turn token's piece too
            "tokens": tokens,
            "reward": 1.0,
            "accuracy": 1.0,
            "fact_accuracy": None,
            "s": [0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0] if expert else None,
            "w": [0.9, 0.9, 2.1, 0.9, 0.9, 0.9, 0.9, 0.9] if expert else None,
        }
        for q, expert in zip(p, (True, False), strict=True)
    ]
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "completions.jsonl", rows)
    out = tmp_path / "run.html"
    build_report([("tgrl", run)], out, problems=[synthetic_dir / "test.jsonl"])
    text = out.read_text()
    page = Page(text)
    assert [a["data-kind"] for a in page.articles] == ["expert slot", "rollout"]
    assert float(page.articles[0]["data-ground"]) == pytest.approx(0.75)  # "red" and " 1" are the reasoning
    assert "f-colour" in page.selects and 'class="b7 v7 r"' in text  # s_t bin 7 and w_t bin 7 (>= 2)
    assert "Some samples carry no s_t" in text


def test_cap_draws_a_seeded_sample_and_says_so(synthetic_dir, tmp_path) -> None:
    many = eval_samples(synthetic_dir, tmp_path / "many", "grpo", n=20)
    few = eval_samples(synthetic_dir, tmp_path / "few", "tgrl", n=3)
    pages = []
    for seed in (0, 0, 1):
        out = tmp_path / f"r{len(pages)}.html"
        counts = build_report([(None, many), (None, few)], out, max_samples=9, seed=seed)
        assert counts["shown"] == 9 and counts["total"] == 23
        pages.append(out.read_text())
    methods = [a["data-method"] for a in Page(pages[0]).articles]
    assert methods.count("tgrl") == 3 and methods.count("grpo") == 6  # the small group keeps all its samples
    assert "Showing a sample of 9 of 23" in pages[0] and "seed 0" in pages[0]
    assert pages[0] == pages[1] and pages[0] != pages[2]


def test_scores_teacher_trajectories_with_a_checkpoint(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    teacher = teacher_file(synthetic_dir, tmp_path / "trajectories.jsonl", n=2)
    out = tmp_path / "t.html"
    build_report([(None, teacher)], out, problems=[synthetic_dir / "test.jsonl"], model=str(tiny_checkpoint))
    page = Page(out.read_text())
    assert len(page.articles) == 2 and len(page.tokens) > 10
    assert all(" v" in t for t in page.tokens)  # expert tokens carry a w_t bin too
    assert "f-colour" in page.selects


def test_bad_inputs_name_file_and_row_and_write_nothing(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    out = tmp_path / "never.html"
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(UserError, match=r"other\.jsonl:1: not a file this report reads"):
        build_report([(None, other)], out)
    good = eval_samples(synthetic_dir, tmp_path / "e", "grpo", n=3)
    rows = [json.loads(line) for line in (good / "samples.jsonl").read_text().splitlines()]
    rows[1]["doc"]["images_json"] = json.dumps([str(tmp_path / "gone.png")])
    write_jsonl(good / "samples.jsonl", rows)
    with pytest.raises(UserError, match=r"samples\.jsonl:2: image .*gone\.png not found"):
        build_report([(None, good)], out)
    rows[1] = rows[0] | {"resps": [[""]], "filtered_resps": [["  "]]}
    write_jsonl(good / "samples.jsonl", rows)
    with pytest.raises(UserError, match=r"samples\.jsonl:2: empty completion"):
        build_report([(None, good)], out)
    assert build_report([(None, good)], tmp_path / "skip.html", skip_empty=True)["shown"] == 2
    teacher = teacher_file(synthetic_dir, tmp_path / "t.jsonl")
    with pytest.raises(UserError, match=r"t\.jsonl:1: problem .* not in the problem files"):
        build_report([(None, teacher)], out)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(tiny_checkpoint, no_processor)
    for name in ("processor_config.json", "preprocessor_config.json"):
        (no_processor / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no-processor.*processor"):
        build_report([(None, good)], out, model=str(no_processor), skip_empty=True)
    assert not out.exists() and not list(tmp_path.glob("never*"))  # nothing half-written


def test_command_line(synthetic_dir, tmp_path) -> None:
    import subprocess
    import sys

    from .test_run_eval import REPO

    folder = eval_samples(synthetic_dir, tmp_path / "e", "grpo", n=2)
    out = tmp_path / "cli.html"
    ok = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval/report_trajectories.py"),
            "--out",
            str(out),
            "--input",
            f"g={folder}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert str(out) in ok.stdout and "2 of 2 samples" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO / "eval/report_trajectories.py"), "--out", str(out), "--input", "missing"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: missing") and "Traceback" not in bad.stderr


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _count_near(pixels, colour: tuple[int, int, int], tol: int = 12) -> int:
    return sum(all(abs(a - b) <= tol for a, b in zip(p[:3], colour, strict=False)) for p in pixels)


async def _drive_page(browser: str, url: str, profile: Path) -> dict:
    """Open ``url`` in headless Chromium over the DevTools protocol (loopback only): screenshot, then
    choose method 'tgrl' in the filter as a person would (the select's value and its change event)."""
    import asyncio
    import subprocess

    import aiohttp

    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1200,1400", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.is_file() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                ids = iter(range(1, 1000))

                async def call(method: str, **params):
                    msg_id = next(ids)
                    await ws.send_json({"id": msg_id, "method": method, "params": params})
                    while True:
                        msg = await asyncio.wait_for(ws.receive_json(), 60)
                        if msg.get("id") == msg_id:
                            assert "error" not in msg, msg
                            return msg["result"]

                async def js(expression: str):
                    result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                    return result["result"].get("value")

                await call("Page.navigate", url=url)
                for _ in range(600):
                    if await js("document.readyState") == "complete":
                        break
                    await asyncio.sleep(0.1)
                before = await js("document.getElementById('count').textContent")
                shot = await call("Page.captureScreenshot", format="png")
                visible = "document.querySelectorAll('article:not([hidden])').length"
                n_before = await js(visible)
                await js(
                    "var s=document.getElementById('f-method');s.value='tgrl';"
                    "s.dispatchEvent(new Event('change'))"
                )
                after = await js("document.getElementById('count').textContent")
                n_after = await js(visible)
                return {
                    "count": (before, after),
                    "visible": (n_before, n_after),
                    "png": base64.b64decode(shot["data"]),
                }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_page_as_a_browser_shows_it(synthetic_dir, tmp_path) -> None:
    """Headless Chromium renders the page: the scene images and the coloured tokens are on screen (pixel
    colours of a screenshot), and choosing a method in the filter changes the number shown."""
    import asyncio
    import io

    from PIL import Image

    from tgrl.evaluation.report import S_COLOURS
    from tgrl.synthetic import COLORS

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:  # a failure, not a skip: CI must run this test (`make slow_test` installs it)
        pytest.fail("no Chromium binary on PATH. Fix: make system_deps (Debian: apt-get install chromium)")
    grpo = eval_samples(synthetic_dir, tmp_path / "grpo", "grpo", n=3)
    tgrl = eval_samples(synthetic_dir, tmp_path / "tgrl", "tgrl", n=2)
    out = tmp_path / "report.html"
    build_report([(None, grpo), (None, tgrl)], out)
    seen = asyncio.run(_drive_page(browser, out.as_uri(), tmp_path / "profile"))
    (tmp_path / "screenshot.png").write_bytes(seen["png"])
    shot = Image.open(io.BytesIO(seen["png"])).convert("RGB")
    assert shot.size[0] >= 1000
    pixels = list(shot.getdata())
    # the scenes' objects (inlined images) and the token colours of s_t bins 8 and 5 are on screen
    assert _count_near(pixels, COLORS["blue"]) > 200 or _count_near(pixels, COLORS["red"]) > 200
    assert _count_near(pixels, _hex(S_COLOURS[8]), tol=4) > 50
    assert _count_near(pixels, _hex(S_COLOURS[5]), tol=4) > 50
    assert seen["count"] == ("5", "2") and seen["visible"] == (5, 2)


def test_twin_pairs_are_drawn_side_by_side_with_their_verdict(tmp_path) -> None:
    """An evaluation of a twin split: each twin is one item with its source scene (both images and texts),
    what changed and whether the stated facts tracked it; a twin the cap keeps brings its source along."""
    from tgrl.synthetic import build_dataset

    data = tmp_path / "data"
    build_dataset(data, 6, 4, seed=0, twins=True)
    rows = [json.loads(line) for line in (data / "test_twins.jsonl").read_text().splitlines()]
    folder = tmp_path / "eval"
    folder.mkdir()
    samples = []
    for i, p in enumerate(rows):
        counts = dict(p["meta"]["counts"])
        if p["meta"]["twin"]["kind"] == "recolor":  # the model misses the recolouring: states the source's
            source = next(r for r in rows if r["id"] == p["meta"]["twin"]["source"])
            counts = source["meta"]["counts"]
        text = f"<think>red {counts['red']}, blue {counts['blue']}</think><answer>{p['answer']}</answer>"
        doc = {
            "id": p["id"],
            "question": p["question"],
            "answer_type": p["answer_type"],
            "images_json": json.dumps([str(data / im) for im in p["images"]]),
            "meta_json": json.dumps(p["meta"]),
        }
        samples.append({"doc_id": i, "doc": doc, "target": p["answer"], "resps": [[text]], "acc": 1.0})
    write_jsonl(folder / "samples.jsonl", samples)
    out = tmp_path / "report.html"
    build_report([("tgrl", folder)], out)
    text = out.read_text()
    page = Page(text)
    n_twins = sum(r["meta"]["twin"]["kind"] != "source" for r in rows)
    assert text.count('<section class="pair"') == n_twins and 'value="twin pair"' in text
    assert len(page.articles) == 2 * n_twins and len(page.images) == 2 * n_twins
    kinds = {r["meta"]["twin"]["kind"] for r in rows} - {"source"}
    assert text.count("remove (") == sum(r["meta"]["twin"]["kind"] == "remove" for r in rows)
    assert "remove" in kinds and "stated facts tracked the change" in text
    assert text.count("stated facts did not track it") == sum(
        r["meta"]["twin"]["kind"] == "recolor" for r in rows
    )
    capped = tmp_path / "capped.html"
    build_report([("tgrl", folder)], capped, max_samples=2, seed=1)
    shown = capped.read_text()
    assert shown.count('<section class="pair"') >= 1  # a kept twin came with its source
