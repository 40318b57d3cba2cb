"""The OpenAI request bodies for completions and chat completions, plus our `steering` field.

Every field the OpenAI API defines is declared here, and none is silently ignored: a field this server
cannot honour (`best_of` > 1, `suffix`, `n` > 1, log probabilities, penalties, `logit_bias`, tools,
`response_format` other than text, audio, ...) is refused with 422 `unsupported_parameter`, naming the
field, unless its value is the neutral one (`best_of: 1`, `n: 1`, `logprobs: null`, `tools: []`, ...).
Fields that only label a request or hint at caching (`user`, `metadata`, `safety_identifier`,
`prompt_cache_key`, ...) change no output and are accepted. Unknown fields outside the OpenAI API are
accepted and ignored (clients and frameworks send many). Sampler bounds are the ones of the native API
(`steering.wire.protocol`), defined there once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from steering.wire.protocol import UNSUPPORTED_PARAMETER, ChatMessage, Seed, SteeringEntry, Stop, Temperature, TopP
from steering.wire.protocol import valid_text as _valid_text


def _only(neutral: Callable[[Any], bool], why: str) -> AfterValidator:
    """Refuse every value but null and the neutral one(s), saying why (the error's location names the field)."""

    def check(value: Any) -> Any:
        if value is not None and not neutral(value):
            raise PydanticCustomError(UNSUPPORTED_PARAMETER, why)
        return value

    return AfterValidator(check)


def _is_zero(value: float) -> bool:
    return value == 0


def _is_empty(value: Any) -> bool:
    return len(value) == 0


_PENALTY = "penalties are not supported by this server: send 0 or leave it out"
_TOOLS = "tools and function calling are not supported by this server"

Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0), _only(_is_zero, _PENALTY)]
LogitBias = Annotated[
    dict[str, float] | None, _only(_is_empty, "token biases are not supported by this server: send {} or leave it out")
]
One = Annotated[int | None, Field(ge=1)]
Label = Annotated[str | None, Field(max_length=512)]


class StreamOptions(BaseModel):
    """`include_usage`: the last chunk always carries the usage; obfuscation padding is never added."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        return _valid_text(data)

    @model_validator(mode="after")
    def _stream_options_need_a_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError(UNSUPPORTED_PARAMETER, "stream_options is only allowed with stream: true")
        return self

    model: str | None = Field(
        None,
        max_length=1024,
        description="The served model: its id in /v1/models (or an alias, see the README); unset means that model.",
    )
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Annotated[Temperature, Field(le=2.0)] = 1.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: Stop | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[One, _only(lambda n: n == 1, "one choice per request is supported: send 1 or leave it out")] = None
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logit_bias: LogitBias = None
    user: Label = None
    steering: list[SteeringEntry] = Field(default_factory=list)

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        ..., description="One prompt (a list of one is accepted, as the OpenAI client may send it)."
    )
    echo: bool = Field(False, description="Put the prompt before the completion (in streams, as the first chunk).")
    best_of: Annotated[
        One, _only(lambda n: n == 1, "one candidate per completion is supported: send 1 or leave it out")
    ] = None
    suffix: Annotated[
        str | None, _only(_is_empty, "insertion (a suffix) is not supported by this server: leave it out")
    ] = None
    logprobs: Annotated[
        int | None,
        Field(ge=0, le=5),
        _only(lambda _: False, "log probabilities are not supported by this server: leave it out"),
    ] = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    """The only content part this server understands; images and audio are refused, not dropped."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """A message; the fields OpenAI defines for tools, audio and participant names are refused unless empty."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart] | None = None
    name: Annotated[
        str | None, _only(lambda _: False, "participant names are not supported by this server: leave it out")
    ] = None
    tool_calls: Annotated[list[Any] | None, _only(_is_empty, _TOOLS)] = None
    function_call: Annotated[dict[str, Any] | None, _only(lambda _: False, _TOOLS)] = None
    audio: Annotated[dict[str, Any] | None, _only(lambda _: False, "audio is not supported by this server")] = None
    refusal: Annotated[
        str | None, _only(lambda _: False, "refusal messages are not supported by this server: send content")
    ] = None

    def plain(self) -> ChatMessage:
        parts = self.content if isinstance(self.content, list) else [TextPart(type="text", text=self.content or "")]
        text = "".join(part.text for part in parts)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


def _text_format(value: dict[str, Any]) -> bool:
    return value == {"type": "text"}


def _no_choice(value: str | dict[str, Any]) -> bool:
    return value == "none"


class ChatCompletionRequest(_Common):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    logprobs: Annotated[
        bool | None,
        _only(lambda on: not on, "log probabilities are not supported by this server: send false or leave it out"),
    ] = None
    top_logprobs: Annotated[
        int | None,
        Field(ge=0, le=20),
        _only(_is_zero, "log probabilities are not supported by this server: send 0 or leave it out"),
    ] = None
    tools: Annotated[list[Any] | None, _only(_is_empty, _TOOLS)] = None
    tool_choice: Annotated[str | dict[str, Any] | None, _only(_no_choice, _TOOLS)] = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted: there are no tools to call.")
    functions: Annotated[list[Any] | None, _only(_is_empty, _TOOLS)] = None
    function_call: Annotated[str | dict[str, Any] | None, _only(_no_choice, _TOOLS)] = None
    response_format: Annotated[
        dict[str, Any] | None,
        _only(_text_format, 'structured output is not supported by this server: only {"type": "text"}'),
    ] = None
    modalities: Annotated[
        list[str] | None, _only(lambda m: m == ["text"], 'only text output is supported: send ["text"]')
    ] = None
    audio: Annotated[dict[str, Any] | None, _only(lambda _: False, "audio output is not supported by this server")] = (
        None
    )
    prediction: Annotated[
        dict[str, Any] | None, _only(lambda _: False, "predicted outputs are not supported by this server")
    ] = None
    reasoning_effort: Annotated[
        str | None, _only(lambda _: False, "reasoning effort is not supported by this server: leave it out")
    ] = None
    verbosity: Annotated[
        str | None, _only(lambda _: False, "verbosity control is not supported by this server: leave it out")
    ] = None
    web_search_options: Annotated[
        dict[str, Any] | None, _only(lambda _: False, "web search is not supported by this server")
    ] = None
    moderation: Annotated[
        dict[str, Any] | None, _only(lambda _: False, "moderation is not supported by this server")
    ] = None
    store: Annotated[
        bool | None, _only(lambda on: not on, "stored completions are not supported: send false or leave it out")
    ] = None
    service_tier: Annotated[
        str | None,
        _only(lambda tier: tier in ("auto", "default"), 'only the "auto" or "default" service tier is served'),
    ] = None
    metadata: dict[str, str] | None = Field(None, description="Accepted: labels only, nothing is stored.")
    safety_identifier: Label = None
    prompt_cache_key: Label = None
    prompt_cache_retention: str | None = Field(None, description="Accepted: a caching hint, no output changes.")
    prompt_cache_options: dict[str, Any] | None = Field(None, description="Accepted: a caching hint.")
