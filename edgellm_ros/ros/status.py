"""What the node reports about itself: the typed ~/status and /diagnostics.

:class:`Counters` holds the request metrics the node keeps since configure;
:func:`fill_status` turns the node's state, its engine and the counters into
an ``edgellm_ros/msg/Status``; :func:`diagnostic_status` turns that Status
into the ``diagnostic_msgs/DiagnosticStatus`` that rqt_robot_monitor and the
diagnostic aggregators read on /diagnostics, so both carry the same values.
Message classes are passed in or imported lazily: only the node imports rclpy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional

#: DiagnosticStatus.name prefix, as "<package>: <node>".
DIAGNOSTIC_PREFIX = "edgellm_ros"


@dataclass
class Counters:
    """Request metrics since configure; updated from the worker and executor threads."""

    served: int = 0                 # answered with success
    failed: int = 0                 # answered with an error code, rejected goals included
    last_tokens_per_second: float = 0.0
    kv_rows: int = 0                # prompt + answer of the last finished request
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, result: Any, error: Optional[BaseException]) -> None:
        """Count one answered request (``result`` is a GenerationResult or None)."""
        with self.lock:
            if result is not None:
                self.kv_rows = int(result.prompt_tokens) + int(result.generated_tokens)
                if result.generated_tokens > 1:
                    self.last_tokens_per_second = float(result.tokens_per_second)
            if error is None and result is not None and result.finish_reason != "cancelled":
                self.served += 1
            else:
                self.failed += 1

    def refused(self) -> None:
        """Count a request answered with an error before it was queued."""
        with self.lock:
            self.failed += 1

    def reset(self) -> None:
        with self.lock:
            self.served = self.failed = self.kv_rows = 0
            self.last_tokens_per_second = 0.0


def fill_status(msg: Any, state: str, engine: Any, queue_depth: int, queue_size: int,
                counters: Counters) -> Any:
    """Fill an edgellm_ros/msg/Status (``engine`` None: not configured)."""
    msg.state = state
    msg.queue_depth = int(queue_depth)
    msg.queue_size = int(queue_size)
    with counters.lock:
        msg.requests_served = counters.served
        msg.requests_failed = counters.failed
        msg.last_tokens_per_second = counters.last_tokens_per_second
        msg.kv_rows_in_use = counters.kv_rows
    if engine is None:
        return msg
    msg.model = engine.model_label
    msg.backend = engine.backend
    msg.vision = engine.vision is not None
    msg.lora = engine.adapter
    msg.lora_adapters = list(engine.adapters.names)
    msg.max_seq_len = int(engine.config.max_seq_len)
    eagle, totals = engine.eagle, engine.eagle_totals
    msg.eagle_draft_loaded = engine.drafter is not None
    msg.eagle_enabled = bool(eagle.enabled)
    msg.eagle_drafting_top_k = int(eagle.drafting_top_k)
    msg.eagle_drafting_step = int(eagle.drafting_step)
    msg.eagle_verify_tree_size = int(eagle.verify_tree_size)
    msg.eagle_confidence_threshold = float(eagle.confidence_threshold)
    msg.eagle_drafts = int(totals.drafts)
    msg.eagle_drafted_tokens = int(totals.drafted_tokens)
    msg.eagle_accepted_tokens = int(totals.accepted_tokens)
    msg.eagle_mean_acceptance_length = float(totals.mean_acceptance_length)
    return msg


def diagnostic_status(status: Any, node_name: str) -> Any:
    """The DiagnosticStatus of one Status: OK while active, WARN otherwise."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    active = status.state == "active"
    if active:
        message = f"active: {status.queue_depth} request(s) generating or waiting"
    elif status.state == "inactive":
        message = "inactive: requests are refused until it is activated"
    else:
        message = f"{status.state}: no model loaded, requests are refused"
    values = [
        ("state", status.state),
        ("backend", status.backend),
        ("model", status.model),
        ("lora", status.lora),
        ("queue depth", status.queue_depth),
        ("queue size", status.queue_size),
        ("last decode tokens/s", f"{status.last_tokens_per_second:.1f}"),
        ("KV rows in use", status.kv_rows_in_use),
        ("max_seq_len", status.max_seq_len),
        ("requests served", status.requests_served),
        ("requests failed", status.requests_failed),
        ("EAGLE enabled", status.eagle_enabled),
        ("EAGLE drafts", status.eagle_drafts),
        ("EAGLE accepted tokens", status.eagle_accepted_tokens),
        ("EAGLE mean acceptance length", f"{status.eagle_mean_acceptance_length:.3f}"),
    ]
    return DiagnosticStatus(
        level=DiagnosticStatus.OK if active else DiagnosticStatus.WARN,
        name=f"{DIAGNOSTIC_PREFIX}: {node_name}", message=message,
        hardware_id=status.backend or "none",
        values=[KeyValue(key=k, value=str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in values])
