"""The ``openai`` teacher backend against a REAL local HTTP server that speaks chat completions.

The server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0) replies with trajectories and,
on a script, with 429 + Retry-After, 500, slow replies (client timeout) and malformed JSON; it counts
the requests in flight at once. Covered: retries, the concurrency bound, images as base64 data URLs,
kill -9 mid-run then resume (no loss, no duplicates), and the API key absent from every output file
and every line the process printed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tgrl.data import load_problems
from tgrl.teachers import SampleSettings, TeacherInput, TeacherJob, make_teacher
from tgrl.teachers.openai_backend import openai_messages, parse_completion, parse_retry_after
from tgrl.utils import REPO_ROOT, UserError

KEY = "sk-tgrl-test-SECRET-8f3a91c2d7"
BUILD = REPO_ROOT / "data_prep" / "build_teacher_trajectories.py"


def reply_text(seed: int, question: str) -> str:
    """What the fake teacher answers: a deterministic function of the request (so any duplicate or
    corruption after a resume is visible)."""
    tag = hashlib.sha256(f"{seed}/{question}".encode()).hexdigest()[:8]
    return f"<think>trace {tag}</think><answer>{seed % 10}</answer>"


class FakeChatServer:
    """A chat-completions endpoint with scripted faults. ``plan`` is consumed one entry per incoming
    request (then ``ok``); ``fault_for`` maps a request body to a fault that applies every time."""

    def __init__(
        self, delay: float = 0.0, plan: list[str] | None = None, fault_for=None, key: str | None = KEY
    ):
        self.delay, self.plan, self.fault_for, self.key = delay, list(plan or []), fault_for, key
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.requests: list[dict] = []
        self.times: dict[int, list[float]] = defaultdict(list)
        self.outcomes: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                with server.lock:
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                self.counted = True
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected for 'slow'
                finally:
                    server.release(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self, h) -> None:
        """A request stops counting as in flight just before its reply is written: once the client has
        the reply it may send the next request, possibly before this handler thread runs again."""
        with self.lock:
            if getattr(h, "counted", False):
                h.counted = False
                self.inflight -= 1

    def send(self, h, status: int, body: bytes, headers: dict | None = None) -> None:
        self.release(h)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        auth = h.headers.get("Authorization")
        with self.lock:
            self.requests.append({"body": body, "auth": auth, "path": h.path})
            self.times[body.get("seed")].append(time.monotonic())
            fault = self.plan.pop(0) if self.plan else None
        if h.path != "/v1/chat/completions":
            self.send(h, 404, b'{"error": "not found"}')
            return
        if self.key is not None and auth != f"Bearer {self.key}":
            self.send(h, 401, b'{"error": "bad key"}')
            return
        fault = fault or (self.fault_for(body) if self.fault_for else None)
        with self.lock:
            self.outcomes[fault or "ok"] += 1
        if fault == "429":
            self.send(h, 429, b'{"error": "slow down"}', {"Retry-After": "1"})
        elif fault == "500":
            self.send(h, 500, b'{"error": "boom"}')
        elif fault == "slow":
            time.sleep(1.5)
            self.send(h, 200, b"{}")
        elif fault == "malformed":
            self.send(h, 200, b'{"choices": [ this is not json')
        elif fault == "echo_auth_400":  # a buggy server that echoes the request headers in its error
            self.send(h, 400, json.dumps({"error": f"bad request, headers: Authorization: {auth}"}).encode())
        else:
            time.sleep(self.delay)
            question = body["messages"][-1]["content"][-1]["text"]
            reply = {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply_text(body["seed"], question)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
            }
            self.send(h, 200, json.dumps(reply).encode())


@pytest.fixture()
def problems(synthetic_dir):
    return load_problems(synthetic_dir / "train.jsonl")


def jobs_for(problems, k: int) -> list[TeacherJob]:
    return [TeacherJob(TeacherInput.from_problem(p), tuple(range(k))) for p in problems]


def make(url: str, monkeypatch, **options):
    monkeypatch.setenv("TGRL_TEST_KEY", KEY)
    base = {"model": "fake-teacher", "base_url": url, "api_key_env": "TGRL_TEST_KEY", "backoff_base": 0.01}
    return make_teacher(
        "openai", SampleSettings(temperature=0.7, top_p=0.9, max_tokens=64, seed=3), {**base, **options}
    )


def run_all(teacher, jobs) -> list:
    return [s for batch in teacher.generate(jobs) for s in batch]


def test_protocol_images_and_concurrency_bound(problems, monkeypatch):
    with FakeChatServer(delay=0.05) as server:
        teacher = make(server.url, monkeypatch, max_concurrency=3)
        samples = run_all(teacher, jobs_for(problems[:10], 2))
        teacher.close()
    assert sorted((s.id, s.sample_idx) for s in samples) == sorted(
        (p.id, i) for p in problems[:10] for i in range(2)
    )
    questions = {p.id: p.question for p in problems}
    assert all(s.text == reply_text(s.seed, questions[s.id]) for s in samples)
    assert all(s.n_tokens == 7 and s.finish_reason == "stop" for s in samples)
    assert 2 <= server.max_inflight <= 3, server.max_inflight
    req = server.requests[0]
    assert req["auth"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "fake-teacher" and body["n"] == 1
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 64)
    assert len({r["body"]["seed"] for r in server.requests}) == 20  # one seed per (id, sample)
    system, user = body["messages"]
    assert system["role"] == "system" and "<think>" in system["content"]
    for r in server.requests:  # each request carries its problem's exact image bytes + question
        image_part, text_part = r["body"]["messages"][1]["content"]
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        sent = base64.b64decode(url.split(",", 1)[1])
        assert any(
            p.question == text_part["text"] and Path(p.image_paths[0]).read_bytes() == sent
            for p in problems[:10]
        )


def test_gold_answer_never_sent(problems, monkeypatch):
    """Corrupting the gold answers changes nothing in what reaches the server."""
    import dataclasses

    bodies = []
    for answer in (None, "GOLD-ANSWER-12345"):
        ps = problems[:3] if answer is None else [dataclasses.replace(p, answer=answer) for p in problems[:3]]
        with FakeChatServer() as server:
            teacher = make(server.url, monkeypatch, max_concurrency=1)
            run_all(teacher, jobs_for(ps, 1))
            teacher.close()
        bodies.append(sorted(json.dumps(r["body"], sort_keys=True) for r in server.requests))
    assert bodies[0] == bodies[1]
    assert not any("GOLD-ANSWER-12345" in b for b in bodies[1])


def test_retries_on_429_500_timeouts_then_success(problems, monkeypatch):
    plan = ["429", "500", "slow", "500"]
    with FakeChatServer(plan=plan) as server:
        teacher = make(server.url, monkeypatch, max_concurrency=1, request_timeout=0.5, max_retries=5)
        t0 = time.monotonic()
        samples = run_all(teacher, jobs_for(problems[:2], 1))
        elapsed = time.monotonic() - t0
        stats = dict(teacher.stats)
        teacher.close()
    assert all(s.text is not None for s in samples) and len(samples) == 2
    assert stats["retries"] == 4 and stats["failed"] == 0
    assert stats["retry_reasons"] == {"429": 1, "500": 2, "timeout": 1}
    # the first request's seed was rate limited: its retry waited for Retry-After (1 s)
    first_seed = server.requests[0]["body"]["seed"]
    times = server.times[first_seed]
    assert times[1] - times[0] >= 0.95, times
    assert elapsed < 10


def test_malformed_json_is_a_failure_after_retries(problems, monkeypatch):
    bad_question = problems[1].question

    def fault_for(body):
        text = body["messages"][1]["content"][-1]["text"]
        return "malformed" if text == bad_question else None

    with FakeChatServer(fault_for=fault_for) as server:
        teacher = make(server.url, monkeypatch, max_concurrency=2, max_retries=2)
        samples = run_all(teacher, jobs_for(problems[:3], 1))
        teacher.close()
    failed = [s for s in samples if s.text is None]
    bad_ids = {p.id for p in problems[:3] if p.question == bad_question}
    assert {s.id for s in failed} == bad_ids
    assert all("malformed" in s.error and "after 2 retries" in s.error for s in failed)
    assert server.outcomes["malformed"] == 3 * len(bad_ids)  # 1 try + 2 retries each


def test_bad_key_stops_the_run_without_leaking_it(problems, monkeypatch):
    with FakeChatServer(key="the-right-key") as server:
        teacher = make(server.url, monkeypatch, max_concurrency=2)
        with pytest.raises(UserError) as err:
            run_all(teacher, jobs_for(problems[:5], 2))
        teacher.close()
    assert "TGRL_TEST_KEY" in str(err.value) and KEY not in str(err.value)
    assert len(server.requests) <= 4 + 2  # stops promptly instead of hammering the endpoint


def test_wrong_url_is_a_clear_error(problems, monkeypatch):
    with FakeChatServer() as server:
        teacher = make(server.url.replace("/v1", "/v2"), monkeypatch, max_concurrency=1)
        with pytest.raises(UserError, match="404"):
            run_all(teacher, jobs_for(problems[:1], 1))
        teacher.close()


def test_helpers():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    text, n, finish = parse_completion(
        json.dumps(
            {
                "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
                "usage": {"completion_tokens": 3},
            }
        ).encode()
    )
    assert (text, n, finish) == ("hi", 3, "length")
    with pytest.raises(ValueError):
        parse_completion(b'{"choices": []}')
    with pytest.raises(ValueError):
        parse_completion(b"not json")


def test_openai_messages_keeps_image_order(tmp_path):
    from PIL import Image

    paths = []
    for i, color in enumerate(["red", "blue"]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), color).save(p)
        paths.append(str(p))
    item = TeacherInput(
        id="x", question="Which is red?", image_paths=tuple(paths), choices=("first", "second")
    )
    messages = openai_messages(item)
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    for part, path in zip(parts[:2], paths, strict=True):
        assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == Path(path).read_bytes()
    assert "(A) first" in parts[2]["text"]


# --------------------------------------------------------------------------------------------------
# the builder script as a subprocess: kill -9 mid-run, resume, exactly once, key never written
# --------------------------------------------------------------------------------------------------


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_and_resume_exactly_once_and_key_never_written(synthetic_dir, tmp_path):
    out = tmp_path / "teacher"
    k = 3
    n_problems = len(load_problems(synthetic_dir / "train.jsonl", check_images=False))
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    logs = []
    with FakeChatServer(delay=0.03, plan=["429", "500"]) as server:
        cmd = [
            sys.executable, str(BUILD), "--backend", "openai", "--data", str(synthetic_dir / "train.jsonl"),
            "--out", str(out), "--k", str(k), "--model", "fake-teacher", "--base-url", server.url,
            "--max-concurrency", "4", "--flush-every", "1", "--backoff-base", "0.01", "--seed", "7",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        traj = out / "trajectories.jsonl"
        deadline = time.monotonic() + 60
        while _lines(traj) < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; slow the server down"
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate()
        logs += [stdout, stderr]
        killed_at = _lines(traj)
        assert 40 <= killed_at < n_problems * k
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["running"] is True  # killed: the manifest still says so

        # A buggy server echoes the Authorization header into an error body on the next request:
        # that sample fails for good (400 is not retried), the run ends incomplete (exit 3) ...
        server.plan = ["echo_auth_400"]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        logs += [first.stdout, first.stderr]
        assert first.returncode == 3, first.stderr
        assert "Rerun the same command" in first.stderr
        incomplete = json.loads((out / "manifest.json").read_text())
        assert incomplete["complete"] is False and incomplete["counts"]["missing"] == 1
        assert "***" in incomplete["failures_this_run"][0]["error"]  # the echoed key was scrubbed
        # ... and a rerun retries exactly the missing sample.
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        logs += [second.stdout, second.stderr]
        assert second.returncode == 0, second.stderr

    rows = [json.loads(line) for line in traj.read_text().splitlines()]
    pairs = Counter((r["id"], r["sample_idx"]) for r in rows)
    assert len(pairs) == n_problems * k and set(pairs.values()) == {1}
    questions = {p.id: p.question for p in load_problems(synthetic_dir / "train.jsonl", check_images=False)}
    for r in rows:  # nothing corrupted: every text is what the server sent for that (id, sample)
        assert r["text"] == reply_text(r["gen"]["seed"], questions[r["id"]])
        assert r["teacher"] == "fake-teacher" and r["n_tokens"] == 7
    final = json.loads((out / "manifest.json").read_text())
    assert final["complete"] is True and final["running"] is False and final["counts"]["missing"] == 0
    assert server.outcomes["echo_auth_400"] == 1
    # The key reached the server, but no file and no log line
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    assert not any(KEY in log for log in logs)
