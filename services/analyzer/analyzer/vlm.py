"""Gemini through the google-genai async client, with timeouts, retries, a shared rate limit,
a per-process concurrency cap and a circuit breaker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import structlog
from google import genai
from google.genai import errors, types
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from analyzer.ratelimit import RateLimiter
from analyzer.resilience import Breaker, backoff, server_retry_delay
from analyzer.schema import PROMPT, VlmAnalysis
from analyzer.settings import AnalyzerSettings

log = structlog.get_logger(__name__)

VLM_REQUESTS = Counter(
    "vlm_requests_total",
    "VLM calls by outcome (ok, retry, timeout, rate_limited, unauthorized, invalid,"
    " server_error) and analyses made by the CLIP fallback (fallback).",
    ["outcome"],
)
VLM_OUTCOMES = (
    "ok",
    "retry",
    "timeout",
    "rate_limited",
    "unauthorized",
    "invalid",
    "server_error",
    "fallback",
)
for _outcome in VLM_OUTCOMES:  # every series exists from start-up, at zero
    VLM_REQUESTS.labels(_outcome)
VLM_LATENCY = Histogram(
    "vlm_latency_seconds",
    "Time of one VLM call, answered or not.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60),
)
VLM_BREAKER_OPEN = Gauge(
    "vlm_breaker_open", "1 while the VLM circuit breaker is open or half-open, else 0."
)
VLM_RATE_LIMIT_WAIT = Histogram(
    "vlm_rate_limit_wait_seconds",
    "Time a VLM call waited for the global rate limit.",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
tracer = trace.get_tracer("mammothbox.analyzer")


class VlmUnavailable(Exception):
    """No analysis from the VLM this time (breaker open, retries exhausted, disabled)."""


class VlmUnauthorized(VlmUnavailable):
    """The key was refused (401/403): asking again message by message will not help."""


class VlmInvalid(VlmUnavailable):
    """The VLM answered, but not with JSON that follows the schema."""


class _Retry(Exception):
    """This call failed in a way worth another try, after `delay` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class GeminiVlm:
    def __init__(self, settings: AnalyzerSettings, limiter: RateLimiter) -> None:
        assert settings.gemini_api_key is not None
        self.settings = settings
        self.model = settings.vlm_model
        self.limiter = limiter
        self.client = genai.Client(
            api_key=settings.gemini_api_key.get_secret_value(),
            http_options=types.HttpOptions(
                base_url=settings.vlm_base_url,
                timeout=int(settings.vlm_timeout * 1000),
                # Retries are ours (they count, back off and honour retry delays).
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self.breaker = Breaker(settings.vlm_breaker_failures, settings.vlm_breaker_reset_s)
        VLM_BREAKER_OPEN.set_function(lambda: 0.0 if self.breaker.state == "closed" else 1.0)
        self._slots = asyncio.Semaphore(settings.vlm_concurrency)
        self._unauthorized_until = 0.0

    @property
    def status(self) -> str:
        """ok, unauthorized, or the breaker's state when it is not closed."""
        if time.monotonic() < self._unauthorized_until:
            return "unauthorized"
        state = self.breaker.state
        return "ok" if state == "closed" else f"breaker {state}"

    async def analyze(self, jpeg: bytes) -> VlmAnalysis:
        """The VLM's analysis of the image, or VlmUnavailable (and its kinds)."""
        if time.monotonic() < self._unauthorized_until:
            raise VlmUnauthorized("the VLM refused the API key")
        attempts = self.settings.vlm_max_retries + 1
        last = "no attempt"
        for attempt in range(attempts):
            if not self.breaker.allow():
                raise VlmUnavailable(f"circuit breaker open after: {last}")
            try:
                with tracer.start_as_current_span(
                    "vlm generate_content",
                    kind=trace.SpanKind.CLIENT,
                    attributes={
                        "gen_ai.system": "gemini",
                        "gen_ai.request.model": self.model,
                        "mammothbox.attempt": attempt + 1,
                    },
                ):
                    return await self._call(jpeg, attempt)
            except _Retry as retry:
                last = str(retry)
                if attempt + 1 == attempts:
                    break
                if retry.delay > self.settings.vlm_max_retry_delay_s:
                    raise VlmUnavailable(f"{last}; asked to wait {retry.delay} s") from None
                VLM_REQUESTS.labels("retry").inc()
                await asyncio.sleep(retry.delay)
        raise VlmUnavailable(f"gave up after {attempts} attempts: {last}")

    async def _call(self, jpeg: bytes, attempt: int) -> VlmAnalysis:
        async with self._slots:
            waited = time.perf_counter()
            await self.limiter.acquire()
            start = time.perf_counter()
            VLM_RATE_LIMIT_WAIT.observe(start - waited)
            try:
                response = await asyncio.wait_for(self._generate(jpeg), self.settings.vlm_timeout)
            except TimeoutError:
                self._failed("timeout")
                raise _Retry(
                    f"no answer within {self.settings.vlm_timeout} s", self._backoff(attempt)
                ) from None
            except errors.APIError as error:
                raise self._api_error(error, attempt) from None
            except (aiohttp.ClientError, OSError) as error:
                self._failed("server_error")
                raise _Retry(f"cannot reach the VLM: {error!r}", self._backoff(attempt)) from None
            finally:
                VLM_LATENCY.observe(time.perf_counter() - start)
        self.breaker.success()
        try:
            analysis = VlmAnalysis.model_validate_json(response.text or "")
        except (ValidationError, ValueError) as error:
            VLM_REQUESTS.labels("invalid").inc()
            raise VlmInvalid(f"the answer does not follow the schema: {error}") from None
        VLM_REQUESTS.labels("ok").inc()
        return analysis

    async def _generate(self, jpeg: bytes) -> types.GenerateContentResponse:
        return await self.client.aio.models.generate_content(
            model=self.model,
            contents=types.Content(
                role="user",
                parts=[
                    types.Part.from_bytes(data=jpeg, mime_type="image/jpeg"),
                    types.Part(text=PROMPT),
                ],
            ),
            config=types.GenerateContentConfig(
                response_mime_type="application/json",
                response_schema=VlmAnalysis,
                temperature=0.2,
            ),
        )

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, self.settings.vlm_backoff_base_s, self.settings.vlm_backoff_max_s)

    def _failed(self, outcome: str) -> None:
        VLM_REQUESTS.labels(outcome).inc()
        self.breaker.failure()

    def _api_error(self, error: errors.APIError, attempt: int) -> Exception:
        code = error.code
        if code in (401, 403):
            VLM_REQUESTS.labels("unauthorized").inc()
            self._unauthorized_until = time.monotonic() + self.settings.vlm_unauthorized_recheck_s
            log.error("the VLM refused the API key; falling back", status=code)
            return VlmUnauthorized(f"the VLM refused the API key ({code})")
        if code == 429:
            VLM_REQUESTS.labels("rate_limited").inc()
            # The server's own retry delay is honoured (up to VLM_MAX_RETRY_DELAY_S).
            delay = server_retry_delay(error.details, _header(error, "retry-after"))
            return _Retry(
                "rate limited (429)", delay if delay is not None else self._backoff(attempt)
            )
        if code >= 500:
            self._failed("server_error")
            return _Retry(f"server error {code}", self._backoff(attempt))
        # Any other 4xx: the request itself was refused; another try would be refused too.
        VLM_REQUESTS.labels("invalid").inc()
        return VlmInvalid(f"the VLM refused the request ({code}): {error.message}")

    async def close(self) -> None:
        await self.client.aio.aclose()


def _header(error: errors.APIError, name: str) -> str | None:
    headers: Any = getattr(error.response, "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    return str(value) if value is not None else None
