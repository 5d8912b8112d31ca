"""Whether anyone still waits for a running request: a caller that is gone stops its generation.

What rclpy lets a server see (rclpy of Kilted, Fast DDS; docs/ROS_HARDENING.md has the
experiment):

- a service callback gets the request only; the request id the executor takes with it
  (``rmw_request_id_t``) carries the sequence number, not the client's GUID, so a
  service cannot tell which client sent a request, nor whether that one is still there;
- the graph lists every client's response reader of a service (the DDS topic
  ``rr/<service>Reply``, ``get_subscriptions_info_by_topic(..., no_mangle=True)``) and
  every subscriber of the action's feedback and status topics;
- a client that exits (its node or context destroyed, Ctrl-C) leaves the graph at once
  (0.5 s measured); one killed with SIGKILL only when its DDS participant's lease runs
  out (Fast DDS: 20 s by default; a client may announce a shorter one in its XML profile).

So a request's caller counts as gone when every endpoint that could be its caller and
was seen since the request arrived (response readers of /ask; feedback and status
subscribers of ~/generate) has left the graph and nobody subscribes to ~/tokens.
While another client of the same service or action lives, or on a middleware whose
graph shows none of these endpoints, a request is never stopped this way.
"""

from __future__ import annotations

from typing import Any, Callable, FrozenSet, Iterable, Set

#: Seconds between two looks at the graph while requests run.
CHECK_PERIOD_S = 0.5


def service_response_topic(service_name: str) -> str:
    """The DDS topic of a service's responses (Fast DDS and Cyclone DDS name it so)."""
    return "rr" + service_name + "Reply"


def action_topics(action_name: str) -> tuple:
    """The action's topics every action client subscribes to (feedback and status)."""
    return (f"{action_name}/_action/feedback", f"{action_name}/_action/status")


class CallerWatch:
    """Tells whether a request's caller may still be there (see the module docstring)."""

    def __init__(self, endpoints: Callable[[], FrozenSet[bytes]],
                 token_subscribers: Callable[[], int]):
        self._endpoints = endpoints
        self._token_subscribers = token_subscribers
        self._seen: Set[bytes] = set(endpoints())

    def gone(self) -> bool:
        """True when no endpoint seen since the request came is left and ~/tokens has no reader."""
        now = self._endpoints()
        self._seen |= now
        return bool(self._seen) and not (self._seen & now) and self._token_subscribers() == 0


def endpoint_ids(node: Any, topics: Iterable[str], no_mangle: bool) -> FrozenSet[bytes]:
    """The GIDs of every subscription of ``topics`` in ``node``'s graph."""
    return frozenset(bytes(info.endpoint_gid) for topic in topics
                     for info in node.get_subscriptions_info_by_topic(topic, no_mangle=no_mangle))


def ask_watch(node: Any, service_name: str, token_subscribers: Callable[[], int]) -> CallerWatch:
    """A CallerWatch for a call of the service ``service_name`` (resolved)."""
    topic = service_response_topic(service_name)
    return CallerWatch(lambda: endpoint_ids(node, (topic,), True), token_subscribers)


def goal_watch(node: Any, action_name: str, token_subscribers: Callable[[], int]) -> CallerWatch:
    """A CallerWatch for a goal of the action ``action_name`` (resolved)."""
    topics = action_topics(action_name)
    return CallerWatch(lambda: endpoint_ids(node, topics, False), token_subscribers)
