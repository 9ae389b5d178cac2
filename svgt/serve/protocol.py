"""Request bodies of the served API (the subset of OpenAI's that guided generation supports) and errors.

Unknown fields are ignored, as OpenAI clients send optional ones freely; fields we cannot honour (``n`` > 1,
tools, logprobs) are refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from svgt.core.errors import BadInput


class GuidanceOptions(BaseModel):
    """The ``svgt`` field of a request (``extra_body={"svgt": {...}}`` in the openai client)."""

    model_config = ConfigDict(extra="forbid")

    refresh_interval: int | None = Field(default=None, ge=1, description="refresh the bridge every N tokens")
    gate_budget: float | None = Field(default=None, ge=0.0, le=1.0,
                                      description="one of the module's calibrated over-refusal budgets")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 decodes greedily
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1)
    svgt: GuidanceOptions | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for text completions

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens


class APIError(BadInput):
    """A request the server answers with an OpenAI-style error body ({"error": {"message", "type", "param",
    "code"}}) and ``status`` (mostly 4xx: bad input named by ``param``)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
