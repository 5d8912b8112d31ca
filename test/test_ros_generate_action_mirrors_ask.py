"""The Generate action's goal and result are the Ask request and response, field for
field and constant for constant; feedback carries the streamed piece."""

from edgellm_ros.action import Generate
from edgellm_ros.msg import ChatMessage
from edgellm_ros.srv import Ask


def _constants(cls):
    return {k: v for k, v in vars(cls).items() if k.isupper() and not k.startswith("_")
            and isinstance(v, int)}


def test_goal_has_the_ask_request_fields_and_result_the_response_fields():
    assert Generate.Goal.get_fields_and_field_types() == Ask.Request.get_fields_and_field_types()
    assert Generate.Result.get_fields_and_field_types() == \
        Ask.Response.get_fields_and_field_types()
    assert _constants(Generate.Result) == _constants(Ask.Response)
    assert "CANCELLED" in _constants(Generate.Result)


def test_requests_carry_messages_json_schema_and_grammar():
    fields = Ask.Request.get_fields_and_field_types()
    assert fields["messages"] == "sequence<edgellm_ros/ChatMessage>"
    assert fields["json_schema"] == fields["grammar"] == "string"
    assert ChatMessage.get_fields_and_field_types() == {
        "role": "string", "content": "string", "image_indices": "sequence<uint32>"}


def test_feedback_is_a_streamed_piece():
    assert Generate.Feedback.get_fields_and_field_types() == {
        "request_id": "uint64", "index": "uint32", "text": "string",
        "generated_tokens": "uint32"}
