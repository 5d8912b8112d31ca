"""The exporter refuses bad input with the project's errors (edgellm_ros.errors), the value named."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from edgellm_ros.errors import ConfigError, UnsupportedModelError
from edgellm_ros.export.decoder import export_decoder
from edgellm_ros.export.draft import export_draft
from edgellm_ros.export.graph import GraphBuilder, pack_int


def test_an_unknown_decoder_quantization_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'int3'"):
        export_decoder(None, str(tmp_path), None, quantization="int3")


def test_an_unknown_draft_quantization_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'int3'"):
        export_draft(None, {}, np.zeros((1, 1), np.float32), str(tmp_path), "int3")


def test_packing_refuses_other_widths_and_odd_int4_counts():
    with pytest.raises(ConfigError, match="got 2"):
        pack_int(np.zeros(4, np.int8), 2)
    with pytest.raises(UnsupportedModelError, match=r"\(3\)"):
        pack_int(np.zeros(3, np.int8), 4)
    assert pack_int(np.array([1, -1], np.int8), 4).tolist() == [0xF1]


def test_a_packed_weight_without_a_weights_file_is_a_config_error():
    g = GraphBuilder("g")
    with pytest.raises(ConfigError, match="model.w"):
        g.weight("model.w", np.zeros(4, np.uint8), elem_type=TensorProto.INT4, dims=[8])
