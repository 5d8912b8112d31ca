"""The bad requests and bad parameters of benchmarks/reliability_bench.py (issue 22).

``REQUESTS``: name -> Ask fields, every kind of bad request we could think of
(empty and oversized texts, unknown adapters, broken images, huge stop lists,
broken schemas and grammars, out-of-range sampling fields, conversations that
make no sense). ``GOALS``: the same through ~/generate. ``PARAMETERS``: name ->
(parameter, value) that the node must refuse while active. Built lazily (the
message classes need the ROS environment).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

MB = 1 << 20


def _image(encoding: str = "rgb8", width: int = 4, height: int = 4, step: int = -1, data: int = -1) -> Any:
    from sensor_msgs.msg import Image
    step = width * 3 if step < 0 else step
    return Image(encoding=encoding, width=width, height=height, step=step,
                 data=bytes(step * height if data < 0 else data))


def _turn(role: str, content: str, images: Tuple[int, ...] = ()) -> Any:
    from edgellm_ros.msg import ChatMessage
    return ChatMessage(role=role, content=content, image_indices=list(images))


def requests() -> Dict[str, Dict[str, Any]]:
    """name -> Ask request fields."""
    nan, inf = float("nan"), float("inf")
    deep = '{"type": "array", "items": ' * 3000 + "{}" + "}" * 3000
    return {
        "empty_prompt": dict(prompt=""),
        "whitespace_prompt": dict(prompt=" \n\t "),
        "prompt_5MB": dict(prompt="word " * MB),
        "prompt_100KB": dict(prompt="word " * 20000),
        "system_prompt_5MB": dict(prompt="hi", system_prompt="word " * MB),
        "prompt_with_nul": dict(prompt="hi\x00 there"),
        "prompt_and_messages": dict(prompt="hi", messages=[_turn("user", "hi")]),
        "messages_unknown_role": dict(messages=[_turn("wizard", "hi")]),
        "messages_empty_content": dict(messages=[_turn("user", "")]),
        "messages_10000_turns": dict(messages=[_turn("user" if i % 2 == 0 else "assistant", "hi")
                                               for i in range(10000)]),
        "messages_image_index_99": dict(messages=[_turn("user", "hi", (99,))]),
        "unknown_adapter": dict(prompt="hi", lora="no_such_adapter"),
        "adapter_path_traversal": dict(prompt="hi", lora="../../../etc/passwd"),
        "max_new_tokens_uint32_max": dict(prompt="hi", max_new_tokens=4294967295),
        "temperature_negative": dict(prompt="hi", temperature=-1.0),
        "temperature_nan": dict(prompt="hi", temperature=nan),
        "temperature_inf": dict(prompt="hi", temperature=inf),
        "temperature_1e30": dict(prompt="hi", temperature=1e30, max_new_tokens=4),
        "top_k_minus_2": dict(prompt="hi", top_k=-2),
        "top_k_int32_max": dict(prompt="hi", top_k=2147483647, max_new_tokens=4),
        "top_p_2": dict(prompt="hi", top_p=2.0),
        "top_p_negative": dict(prompt="hi", top_p=-0.5),
        "top_p_nan": dict(prompt="hi", top_p=nan),
        "seed_minus_2": dict(prompt="hi", seed=-2),
        "seed_int64_max": dict(prompt="hi", seed=9223372036854775807, max_new_tokens=4),
        "stop_100000_strings": dict(prompt="hi", stop=[f"x{i}" for i in range(100000)], max_new_tokens=16),
        "stop_empty_string": dict(prompt="hi", stop=[""], max_new_tokens=4),
        "stop_1MB_string": dict(prompt="hi", stop=["y" * MB], max_new_tokens=4),
        "json_schema_not_json": dict(prompt="hi", json_schema="{"),
        "json_schema_not_an_object": dict(prompt="hi", json_schema="[]"),
        "json_schema_unknown_type": dict(prompt="hi", json_schema='{"type": "quaternion"}'),
        "json_schema_3000_deep": dict(prompt="hi", json_schema=deep),
        "json_schema_and_grammar": dict(prompt="hi", json_schema='{"type": "string"}', grammar="start: \"a\""),
        "grammar_invalid": dict(prompt="hi", grammar="start: ("),
        "grammar_undefined_rule": dict(prompt="hi", grammar="start: missing_rule"),
        "use_image_on_a_text_model": dict(prompt="what is this?", use_image=True),
        "image_unknown_encoding": dict(prompt="?", use_image=True, image=_image("bogus")),
        "image_data_shorter_than_step_x_height": dict(prompt="?", use_image=True, image=_image(data=10)),
        "image_zero_width": dict(prompt="?", use_image=True, image=_image(width=0, step=0, data=0)),
        "image_100000x100000_header_4_bytes": dict(prompt="?", use_image=True,
                                                   image=_image(width=100000, height=100000, data=4)),
        "image_step_smaller_than_row": dict(prompt="?", use_image=True, image=_image(step=2)),
        "images_100": dict(prompt="?", use_image=True, image=_image(), images=[_image() for _ in range(100)]),
    }


def goals() -> Dict[str, Dict[str, Any]]:
    """name -> Generate goal fields (the action's own validation path)."""
    every = requests()
    return {f"goal_{n}": every[n] for n in ("empty_prompt", "unknown_adapter", "top_p_2", "json_schema_not_json",
                                            "stop_100000_strings", "image_unknown_encoding")}


#: name -> (parameter, value) the node must refuse while it is active.
PARAMETERS: Dict[str, Tuple[str, Any]] = {
    "top_p_0": ("sampling.top_p", 0.0),
    "top_p_negative": ("sampling.top_p", -1.0),
    "top_p_2": ("sampling.top_p", 2.0),
    "temperature_negative": ("sampling.temperature", -1.0),
    "temperature_nan": ("sampling.temperature", float("nan")),
    "top_k_minus_5": ("sampling.top_k", -5),
    "max_new_tokens_0": ("max_new_tokens", 0),
    "max_new_tokens_negative": ("max_new_tokens", -1),
    "queue_size_100000": ("queue_size", 100000),
    "max_image_age_0": ("max_image_age", 0.0),
    "max_image_age_negative": ("max_image_age", -1.0),
    "lora_unknown": ("lora", "no_such_adapter"),
    "eagle_top_k_1000": ("eagle.drafting_top_k", 1000),
    "eagle_threshold_2": ("eagle.confidence_threshold", 2.0),
    "model_while_active": ("model", "/tmp/elsewhere.gguf"),
    "engine_dir_while_active": ("engine_dir", "/tmp"),
    "max_seq_len_while_active": ("max_seq_len", 64),
    "wrong_type_max_new_tokens_text": ("max_new_tokens", "many"),
    "wrong_type_temperature_text": ("sampling.temperature", "hot"),
    "wrong_type_lora_int": ("lora", 5),
    "wrong_type_eagle_enabled_text": ("eagle.enabled", "yes"),
}
