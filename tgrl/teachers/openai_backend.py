"""Teacher backend for any OpenAI-compatible chat-completions endpoint (``vllm serve``, a hosted API).

One request per (problem, sample) on a bounded thread pool, retried with backoff on transient errors, so
a 100k-sample run keeps flat memory and resumes sample by sample; the API key is read from the
environment and never written anywhere. Retry rules and key handling: docs/design.md#51-teachers.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tgrl.teachers.base import SampleSettings, Teacher, TeacherInput, TeacherJob, TeacherSample, sample_seed
from tgrl.utils import UserError

logger = logging.getLogger(__name__)

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _SampleFailed(Exception):
    """A non-retryable failure of one request (e.g. 400: this prompt is too long)."""


class _RunFailed(Exception):
    """A failure every request would share (bad key, unknown model, wrong URL): stop the run."""


def image_data_url(path: str) -> str:
    """The file's bytes as a ``data:`` URL (the exact pixels; formats other than PNG/JPEG/GIF/WEBP
    are re-encoded as PNG)."""
    import io

    from PIL import Image

    with Image.open(path) as im:
        fmt = (im.format or "").upper()
        if fmt in _MIME_BY_FORMAT:
            with open(path, "rb") as f:
                data, mime = f.read(), _MIME_BY_FORMAT[fmt]
        else:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(item: TeacherInput, image_detail: str | None = None) -> list[dict]:
    """The project prompt in chat-completions form: each ``{"type": "image"}`` placeholder of
    :func:`build_messages` becomes an ``image_url`` part holding the matching image as a data URL."""
    images = iter(item.image_paths)
    out = []
    for message in item.messages():
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                image_url: dict[str, Any] = {"url": image_data_url(next(images))}
                if image_detail:
                    image_url["detail"] = image_detail
                parts.append({"type": "image_url", "image_url": image_url})
            else:
                parts.append({"type": "text", "text": part["text"]})
        if message["role"] == "system" and all(p["type"] == "text" for p in parts):
            out.append({"role": "system", "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": message["role"], "content": parts})
    return out


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_completion(body: bytes) -> tuple[str, int | None, str | None]:
    """(text, completion tokens, finish reason) from a chat-completions reply; malformed -> ValueError."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise ValueError("reply has no 'choices'")
    choice = data["choices"][0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise ValueError("reply's first choice has no 'message'")
    content = choice["message"].get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    n_tokens = usage.get("completion_tokens")
    finish = choice.get("finish_reason")
    return (
        content,
        n_tokens if isinstance(n_tokens, int) else None,
        finish if isinstance(finish, str) else None,
    )


class OpenAITeacher(Teacher):
    """Trajectories from an OpenAI-compatible ``/chat/completions`` endpoint (see module docstring)."""

    backend = "openai"

    @dataclass
    class Options:
        model: str | None = None
        base_url: str = "https://api.openai.com/v1"
        api_key_env: str = "OPENAI_API_KEY"
        max_concurrency: int = 8
        max_retries: int = 6
        request_timeout: float = 120.0
        backoff_base: float = 1.0
        backoff_max: float = 60.0
        retry_after_max: float = 600.0
        send_seed: bool = True
        max_tokens_field: str = "max_tokens"  # "max_completion_tokens" for newer hosted models
        image_detail: str | None = None
        extra_body: dict | None = None  # merged into every request, e.g. {"top_k": 20} for vLLM

    def __init__(self, settings: SampleSettings, options: Options | None = None):
        super().__init__(settings, options)
        o = self.options
        if not o.model:
            raise UserError("openai teacher: --model is required (the model name the endpoint serves)")
        if o.max_concurrency < 1 or o.max_retries < 0:
            raise UserError("openai teacher: max_concurrency must be >= 1 and max_retries >= 0")
        if not o.base_url.startswith(("http://", "https://")):
            raise UserError(
                f"openai teacher: base_url must start with http:// or https://, got {o.base_url!r}"
            )
        if o.extra_body is not None and not isinstance(o.extra_body, dict):
            raise UserError("openai teacher: extra_body must be a mapping (set it in the YAML config)")
        self._api_key = os.environ.get(o.api_key_env) or None
        if self._api_key is None:
            logger.warning(
                "openai teacher: environment variable %s is not set; sending requests without a key",
                o.api_key_env,
            )
        self._url = o.base_url.rstrip("/") + "/chat/completions"
        self._stop = threading.Event()
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "failed": 0, "retry_reasons": {}}
        self._stats_lock = threading.Lock()
        import httpx

        self._client = httpx.Client(
            timeout=httpx.Timeout(o.request_timeout),
            limits=httpx.Limits(
                max_connections=o.max_concurrency, max_keepalive_connections=o.max_concurrency
            ),
            headers=self._headers(),
        )

    @property
    def name(self) -> str:
        return str(self.options.model)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced (for any message that may reach a log or file)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _count(self, key: str, reason: str | None = None) -> None:
        with self._stats_lock:
            self.stats[key] += 1
            if reason:
                kind = reason.split(":")[0]
                self.stats["retry_reasons"][kind] = self.stats["retry_reasons"].get(kind, 0) + 1

    def payload(self, messages: list[dict], seed: int) -> dict[str, Any]:
        s, o = self.settings, self.options
        body: dict[str, Any] = {
            "model": o.model,
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            o.max_tokens_field: s.max_tokens,
            "n": 1,
        }
        if o.send_seed:
            body["seed"] = seed
        if o.extra_body:
            body.update(o.extra_body)
        return body

    def _request_once(self, body: dict[str, Any]) -> tuple[str, int | None, str | None]:
        import httpx

        try:
            response = self._client.post(self._url, json=body)
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout: {type(err).__name__}") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection: {type(err).__name__}: {err}") from None
        except httpx.HTTPError as err:  # any other client-side failure: worth another try
            raise _Retryable(f"http: {type(err).__name__}: {err}") from None
        status = response.status_code
        if status == 429:
            raise _Retryable("429: rate limited", parse_retry_after(response.headers.get("retry-after")))
        if status >= 500:
            raise _Retryable(
                f"{status}: server error", parse_retry_after(response.headers.get("retry-after"))
            )
        if status in (401, 403):
            raise _RunFailed(
                f"HTTP {status} from {self._url}: the endpoint rejected the credentials. "
                f"Fix: put a valid key in the environment variable {self.options.api_key_env}"
            )
        if status == 404:
            raise _RunFailed(
                f"HTTP 404 from {self._url}: check base_url (it should end in /v1) and the model name "
                f"{self.options.model!r}. Reply: {response.text[:300]}"
            )
        if status == 408:
            raise _Retryable("408: request timeout")
        if status >= 400:
            raise _SampleFailed(f"HTTP {status}: {response.text[:300]}")
        try:
            return parse_completion(response.content)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise _Retryable(f"malformed: {err}") from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        o = self.options
        with self._rng_lock:
            delay = self._rng.uniform(0, min(o.backoff_max, o.backoff_base * 2**attempt))  # full jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, o.retry_after_max))
        return delay

    def request(self, item_id: str, sample_idx: int, messages: list[dict]) -> TeacherSample:
        """One sample with retries; never raises except :class:`_RunFailed`."""
        seed = sample_seed(self.settings.seed, item_id, sample_idx)
        body = self.payload(messages, seed)
        last = "not attempted"
        for attempt in range(self.options.max_retries + 1):
            if self._stop.is_set():
                return TeacherSample(item_id, sample_idx, None, seed, error="run stopped")
            self._count("requests")
            try:
                text, n_tokens, finish = self._request_once(body)
                return TeacherSample(item_id, sample_idx, text, seed, n_tokens=n_tokens, finish_reason=finish)
            except _Retryable as err:
                last = self.scrub(str(err))
                if attempt == self.options.max_retries:
                    break
                self._count("retries", last)
                delay = self._backoff(attempt, err.retry_after)
                logger.debug(
                    "retry %d for %s/%d after %.2fs: %s", attempt + 1, item_id, sample_idx, delay, last
                )
                self._stop.wait(delay)
            except _SampleFailed as err:
                last = self.scrub(str(err))
                break
        self._count("failed")
        return TeacherSample(
            item_id, sample_idx, None, seed, error=f"{last} (after {self.options.max_retries} retries)"
        )

    def _tasks(self, jobs: Sequence[TeacherJob]) -> Iterator[tuple[str, int, list[dict]]]:
        """(id, sample_idx, messages) per request; a job's images are encoded once for its K samples."""
        for job in jobs:
            if job.sample_indices:
                messages = openai_messages(job.input, self.options.image_detail)
                for idx in job.sample_indices:
                    yield job.input.id, idx, messages

    def generate(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherSample]]:
        self._stop.clear()
        window = 2 * self.options.max_concurrency
        tasks = self._tasks(jobs)
        pending: set[Future] = set()
        with ThreadPoolExecutor(
            max_workers=self.options.max_concurrency, thread_name_prefix="teacher"
        ) as pool:
            try:
                while True:
                    while len(pending) < window:
                        task = next(tasks, None)
                        if task is None:
                            break
                        pending.add(pool.submit(self.request, *task))
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        try:
                            sample = future.result()
                        except _RunFailed as err:
                            self._stop.set()
                            raise UserError(self.scrub(str(err))) from None
                        yield [sample]
            finally:
                self._stop.set()  # on any exit (error, interrupt, generator closed) stop waiting workers
                for future in pending:
                    future.cancel()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["request_stats"] = dict(self.stats)
        return info

    def close(self) -> None:
        self._stop.set()
        self._client.close()
