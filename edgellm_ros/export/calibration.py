"""Calibration inputs for re-quantized INT4 blocks.

Re-quantizing a weight to symmetric INT4 (``int4-sym``'s Q4_1 blocks, float
checkpoints) chooses each block's scale; :func:`input_mean_squares` measures
what the projections' inputs look like on a short text written for this
project (chat turns, prose, code, arithmetic: ``CALIBRATION_TEXT``, not the
quality sample the benchmarks score), so that
:func:`edgellm_ros.models.quant.quantize_symmetric` can weight each input
feature's error by how much energy it carries.

The text runs once through the NumPy reference on the float weights (its LM
head skipped; at export time only).
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict

import numpy as np

from ..models.llama import LlamaReference

CALIBRATION_TEXT = "\n".join([
    '<|im_start|>system',
    'You are a helpful assistant on a mobile robot. Answer briefly and say when you are unsure.<|im_end|>',
    '<|im_start|>user',
    'What is in front of the robot right now?<|im_end|>',
    '<|im_start|>assistant',
    'A wooden pallet sits about two meters ahead, slightly to the left. Behind it there is an open '
    'doorway and a person carrying a box. The floor looks dry and clear on the right side, so the safest '
    'path is to pass on the right at low speed.<|im_end|>',
    '<|im_start|>user',
    'Can you write a short Python function that returns the average of a list?<|im_end|>',
    '<|im_start|>assistant',
    'Sure. Here is one that also handles an empty list:',
    '',
    'def average(values):',
    '    if not values:',
    '        return 0.0',
    '    return sum(values) / len(values)',
    '',
    'Calling average([2, 4, 9]) returns 5.0.<|im_end|>',
    '<|im_start|>user',
    'Give me three tips for keeping a vegetable garden healthy in summer.<|im_end|>',
    '<|im_start|>assistant',
    '1. Water early in the morning, deeply and less often, so the roots grow down instead of staying near'
    ' the surface.',
    '2. Spread a layer of mulch such as straw or dry leaves; it keeps the soil cool and slows weeds.',
    '3. Check the undersides of leaves every few days for insects and remove damaged leaves before '
    'problems spread.<|im_end|>',
    'The river valley was quiet in the early hours. Fog lay over the fields, and the only sound came from'
    " a tractor somewhere beyond the hill. By nine o'clock the sun had burned the mist away, and the "
    'market in the small town began to fill with farmers selling apples, cheese, honey and bread. '
    'Children ran between the stalls while their parents argued politely about prices.',
    '',
    'Mobile robots plan their motion in layers. A global planner finds a route through a map of the '
    'building, often with a graph search such as A* over an occupancy grid. A local planner then follows '
    'that route while avoiding obstacles the map does not contain: people, carts, doors that were closed '
    'yesterday and open today. The controller turns the local plan into wheel velocities many times per '
    'second, and a safety layer can stop the base if a bumper or a laser scanner reports something too '
    'close.',
    '',
    'In 1969 two astronauts landed on the Moon while a third stayed in orbit. The mission depended on '
    'computers far weaker than a modern phone, careful checklists, and thousands of engineers on the '
    'ground. Later missions carried a small electric car, collected hundreds of kilograms of rock, and '
    'left instruments that measured moonquakes for years.',
    '',
    'To make a simple tomato soup, soften a chopped onion and two cloves of garlic in olive oil, add a '
    'can of tomatoes and a cup of stock, and simmer for twenty minutes. Blend until smooth, season with '
    'salt and pepper, and finish with a spoonful of cream or a few leaves of fresh basil.',
    '',
    'Temperature sensors drift over time, so calibration matters. A common approach compares the sensor '
    'against a reference in a few known conditions, fits a line through the pairs of readings, and stores'
    ' the slope and the offset. When the error grows beyond a threshold, the system asks for a new '
    'calibration instead of silently reporting wrong values.',
    '',
    'Dear team, the meeting on Thursday has moved to 3 pm in room 204. Please bring the updated test '
    'results and the list of open questions about the gripper. If you cannot attend, send your notes to '
    'Maria before noon.',
    '',
    'The equation 3x + 7 = 22 is solved by subtracting seven from both sides, which gives 3x = 15, and '
    'then dividing by three, so x = 5. Checking the answer: 3 times 5 is 15, plus 7 is 22.',
]) + "\n"


#: Recorded in the manifest beside the weights it shaped.
CALIBRATION_SHA256 = hashlib.sha256(CALIBRATION_TEXT.encode("utf-8")).hexdigest()[:16]


class _Recorder(LlamaReference):
    """The reference forward, summing each projection input's squares per feature."""

    def __init__(self, weights: Any):
        super().__init__(weights)
        self.lm_head = self.lm_head[:1]   # no logits needed: one row keeps forward's shapes
        self.sums: Dict[str, np.ndarray] = {}

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        sq = np.einsum("tk,tk->k", x, x, dtype=np.float64)
        self.sums[name] = self.sums.get(name, 0.0) + sq
        return super()._linear(x, name)


def calibration_ids(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """CALIBRATION_TEXT's token ids (special tokens parsed), those inside the model's vocabulary.

    For a real model every id is inside; the filter is for test models with a
    cut-down vocabulary and a borrowed tokenizer.
    """
    ids = np.asarray(tokenizer.encode(CALIBRATION_TEXT), np.int64)
    return ids[ids < vocab_size]


def input_mean_squares(weights: Any, ids: np.ndarray) -> Dict[str, np.ndarray]:
    """{"layers.i.<module>.weight": [in] float32 mean square of the projection's input per feature}."""
    rec = _Recorder(weights)
    rec.forward(rec.embed(ids), np.arange(len(ids)), [])
    return {f"{name}.weight": (s / len(ids)).astype(np.float32) for name, s in rec.sums.items()}
