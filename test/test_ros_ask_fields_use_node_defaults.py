"""Ask request fields: zero/empty means the node's default; errors map to codes."""

import pytest

from edgellm_ros.runtime.config import SamplingConfig
from edgellm_ros.errors import (BackendError, ConfigError, ContextFull, EdgeLLMError,
                                InvalidRequest, ModelLoadError)
from edgellm_ros.runtime.generation import GenerationResult
from edgellm_ros.ros.ask import (ERROR_CODE_NAMES, NotActive, QueueFull, error_code_name,
                                 fill_error, fill_result, generation_request)
from edgellm_ros.ros.params import RequestDefaults
from edgellm_ros.srv import Ask

NODE = RequestDefaults(system_prompt="Be brief.", max_new_tokens=32,
                       sampling=SamplingConfig(temperature=0.5, top_k=20, top_p=0.8, seed=11))


def test_zero_fields_take_the_node_defaults():
    req = generation_request(Ask.Request(prompt="hi"), NODE)
    assert req.prompt == "hi" and req.system_prompt == "Be brief."
    assert req.max_new_tokens == 32 and req.stop == ()
    assert req.sampling == NODE.sampling


def test_given_fields_override_the_defaults():
    req = generation_request(Ask.Request(
        prompt="hi", system_prompt="Be long.", max_new_tokens=5, temperature=1.5, top_k=3,
        top_p=0.5, seed=99, stop=["\n\n", "END"]), NODE)
    assert (req.system_prompt, req.max_new_tokens, req.stop) == ("Be long.", 5, ("\n\n", "END"))
    assert req.sampling == SamplingConfig(temperature=1.5, top_k=3, top_p=0.5, seed=99)


def test_minus_one_means_no_top_k_limit_and_fresh_entropy():
    req = generation_request(Ask.Request(prompt="hi", top_k=-1, seed=-1), NODE)
    assert req.sampling.top_k == 0 and req.sampling.seed is None


def test_greedy_from_a_sampling_node_by_top_k_one():
    assert generation_request(Ask.Request(prompt="hi", top_k=1), NODE).sampling.greedy


def test_no_system_prompt_anywhere_means_the_template_default():
    req = generation_request(Ask.Request(prompt="hi"), RequestDefaults())
    assert req.system_prompt is None and req.sampling.seed is None


@pytest.mark.parametrize("fields, words", [
    (dict(prompt=""), "prompt must be a non-empty string"),
    (dict(prompt="   "), "prompt must be a non-empty string"),
    (dict(prompt="hi", temperature=-1.0), "temperature must be in [0, 100], got -1.0"),
    (dict(prompt="hi", top_p=1.5), "top_p must be in [0.001, 1], got 1.5"),
    (dict(prompt="hi", top_k=-2), "top_k must be -1 (no limit), 0 (node default) or > 0"),
    (dict(prompt="hi", seed=-5), "got -5"),
    (dict(prompt="hi", max_new_tokens=100000), "got 100000"),
    (dict(prompt="hi", stop=["ok", ""]), "stop strings must be non-empty"),
])
def test_invalid_fields_raise_invalid_request_naming_the_value(fields, words):
    with pytest.raises(InvalidRequest) as info:
        generation_request(Ask.Request(**fields), NODE)
    assert words in str(info.value)


def test_every_error_code_name_is_a_constant_of_the_response():
    names = set(ERROR_CODE_NAMES.values()) | {"OK", "INTERNAL"}
    values = [getattr(Ask.Response, n) for n in names]
    assert len(set(values)) == len(values)
    assert Ask.Response.OK == 0


@pytest.mark.parametrize("exc, name", [
    (InvalidRequest("x"), "INVALID_REQUEST"), (ConfigError("x"), "INVALID_REQUEST"),
    (ContextFull("x"), "CONTEXT_FULL"), (BackendError("x"), "BACKEND_ERROR"),
    (NotActive("x"), "NOT_ACTIVE"), (QueueFull("x"), "QUEUE_FULL"),
    (ModelLoadError("x"), "INTERNAL"), (EdgeLLMError("x"), "INTERNAL"),
    (ValueError("x"), "INTERNAL"), (KeyError("x"), "INTERNAL"),
])
def test_exceptions_map_to_error_codes(exc, name):
    assert error_code_name(exc) == name
    res = fill_error(Ask.Response(), exc)
    assert not res.success and res.error_code == getattr(Ask.Response, name) and res.message


def test_result_fills_the_response_and_cancelled_is_a_failure():
    result = GenerationResult(text="Hello", token_ids=[1, 2], finish_reason="length",
                              prompt_tokens=30, generated_tokens=2, cached_tokens=10,
                              time_to_first_token=0.25, tokens_per_second=40.0)
    res = fill_result(Ask.Response(), result)
    assert res.success and res.error_code == Ask.Response.OK and res.message == ""
    assert (res.text, res.finish_reason, res.prompt_tokens, res.cached_tokens,
            res.generated_tokens) == ("Hello", "length", 30, 10, 2)
    assert res.time_to_first_token == 0.25 and res.tokens_per_second == 40.0
    result.finish_reason = "cancelled"
    res = fill_result(Ask.Response(), result)
    assert not res.success and res.error_code == Ask.Response.CANCELLED
    assert res.text == "Hello" and "cancelled" in res.message
