"""A reduced vocabulary's LM head gives the full head's logits on kept ids and -inf elsewhere.

The real default model and the shipped set (vocab/, runtime/vocab.py), on the
three head paths of export/lm_head.py: the float MatMul (plain-op float
graph), the 8-bit blocks (plain-op int4 graph: what TensorRT builds) and the
fused CPU graph's three modes (whole int8 head, float32 head, two-pass).
Generation never leaves the set; the engine folder and the manifest hold it;
the draft never proposes a token outside it; bad files are refused with the
file, the field and the reason.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgellm_ros.contract import read_manifest
from edgellm_ros.errors import ConfigError
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest, SamplingConfig
from edgellm_ros.runtime.engine_dir import graph_name
from edgellm_ros.runtime.vocab import SHIPPED, load_vocab_reduction, read_token_ids, resolve_vocab_path

TEXT = "The robot arm picks up the red cube, checks the gripper's force sensor and puts it in box 7."


def _load(**kw):
    from edgellm_ros.runtime.engine import Engine
    kw.setdefault("eagle_draft", "default")   # the shipped draft unless the test says
    return Engine.load(EngineConfig(max_seq_len=256, prefill_chunk=64, **kw), log=lambda m: None)


@pytest.fixture(scope="module")
def kept():
    ids = np.array(read_token_ids(resolve_vocab_path(SHIPPED, "")), np.int64)
    mask = np.zeros(49152, bool)
    mask[ids] = True
    return mask


GRAPHS = [dict(quantization="none", fused_ops=False), dict(quantization="int4", fused_ops=False),
          dict(quantization="int4", int4_compute="int8"), dict(quantization="int4-sym", int4_compute="float32")]


@pytest.mark.parametrize("kw", GRAPHS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_reduced_logits_equal_the_full_heads_on_kept_ids_and_are_minus_inf_elsewhere(
        default_engine_dir, kept, kw):
    full = _load(eagle_draft="", **kw)
    red = _load(eagle_draft="", vocab_reduction=SHIPPED, **kw)
    try:
        ids = full.tokenizer.encode(TEXT)
        for fast in (False, True):
            full.decoder.set_fast_head(fast)
            red.decoder.set_fast_head(fast)
            a = full.decoder.forward(0, ids, logits_rows="all").copy()
            b = red.decoder.forward(0, ids, logits_rows="all").copy()
            assert np.isneginf(b[:, ~kept]).all() and np.isfinite(b[:, kept]).all()
            if fast and red.decoder.has_fast_head:
                # two passes: exact logits for the best candidates of each head; the best
                # kept token of the full head is among the reduced head's, with its logit
                best = np.where(kept, a, -np.inf).argmax(-1)
                assert (b.argmax(-1) == best).all()
                rows = np.arange(len(ids))
                assert np.array_equal(b[rows, best], a[rows, best])
            else:
                assert np.array_equal(a[:, kept], b[:, kept])
    finally:
        full.close()
        red.close()


def test_generation_never_leaves_the_set_and_the_folder_holds_it(default_engine_dir, kept):
    eng = _load(quantization="int4", eagle_draft="", vocab_reduction=SHIPPED)
    try:
        for sampling in (SamplingConfig(), SamplingConfig(temperature=1.5, seed=3)):
            res = eng.generate(GenerationRequest(prompt="Write three odd words in German and Czech: ",
                                                 max_new_tokens=48, sampling=sampling, ignore_eos=True))
            assert len(res.token_ids) == 48 and kept[res.token_ids].all()
        red = load_vocab_reduction(resolve_vocab_path(SHIPPED, ""), 49152)
        manifest = read_manifest(eng.folder)
        names = [graph_name(lora, eagle3, "int4", True, red.digest) for lora in (False, True)
                 for eagle3 in (False, True)]
        for name in names:
            assert manifest["graphs"][name]["vocab_reduction"] == {
                "sha256": red.digest, "kept": int(kept.sum()), "file": red.file_name}
            assert os.path.exists(os.path.join(eng.folder, name + ".onnx"))
        with open(os.path.join(eng.folder, red.file_name), encoding="utf-8") as f:
            assert json.load(f) == np.flatnonzero(kept).tolist()
        full = manifest["graphs"][graph_name(False, False, "int4", True)]
        assert "vocab_reduction" not in full     # the full family lives beside it, untouched
    finally:
        eng.close()


def test_the_draft_never_proposes_a_token_outside_the_set(default_engine_dir, kept, tmp_path):
    """A set without half of the draft's vocabulary (the shipped set holds all of it)."""
    from edgellm_ros.models.eagle import load_draft
    from edgellm_ros.models.spec import ModelConfig
    from edgellm_ros.runtime.engine import resolve_artifacts
    from edgellm_ros.runtime.resources import DEFAULT_DRAFT, share_dir
    from edgellm_ros.runtime.speculative import EagleConfig
    from edgellm_ros.runtime.tokenizer import Tokenizer
    from edgellm_ros.runtime.vocab import required_ids

    base = ModelConfig.from_dict(read_manifest(default_engine_dir)["model"])
    d2t = load_draft(os.path.join(share_dir(), DEFAULT_DRAFT), base)[1]["d2t"]
    tok = Tokenizer.from_hf_folder(default_engine_dir)
    drop = set((np.arange(len(d2t)) + d2t)[1::2].tolist()) - set(required_ids(tok))
    tok.close()
    kept = kept.copy()
    kept[list(drop)] = False
    path = str(tmp_path / "ids.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(np.flatnonzero(kept).tolist(), f)
    eng = _load(quantization="int4", vocab_reduction=path)
    try:
        d = eng.drafter
        assert d is not None and d.banned is not None and d.banned.sum() == len(drop)
        assert kept[d.to_base(np.flatnonzero(~d.banned))].all()
        assert not kept[d.to_base(np.flatnonzero(d.banned))].any()
        ids = eng.tokenizer.encode(TEXT)
        eng.decoder.set_features(True)
        eng.decoder.forward(0, ids, logits_rows="all")
        feats = eng.decoder.hidden[:len(ids)].copy()
        d.done = 0
        logits, hidden = d.catch_up(0, ids[1:] + [ids[-1]], feats)
        tree = d.build_tree(logits, hidden, EagleConfig(True, 8, 4, 64, confidence_threshold=0.0))
        assert len(tree.tokens) > 8 and kept[tree.tokens].all()
        # EAGLE off and no adapter: the plain session of the same reduced family decodes
        art = resolve_artifacts(eng.config, "onnxruntime", eng.eagle_limits, log=lambda m: None)
        digest = art.vocab.digest
        assert (art.graph, art.plain_graph) == (graph_name(False, True, "int4", True, digest),
                                                graph_name(False, False, "int4", True, digest))
        res = eng.generate(GenerationRequest(prompt="Name five rare gemstones.", max_new_tokens=32,
                                             ignore_eos=True))
        assert eng.decoder.runs_plain and kept[res.token_ids].all()
    finally:
        eng.close()


def _write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_bad_files_are_refused_naming_the_file_the_field_and_the_reason(default_engine_dir, tmp_path, kept):
    from edgellm_ros.runtime.tokenizer import Tokenizer

    good = np.flatnonzero(kept).tolist()
    tok = Tokenizer.from_hf_folder(default_engine_dir)
    byte = tok.byte_token_ids()[7]
    tok.close()
    cases = {
        "missing": (str(tmp_path / "nope.json"), "is missing"),
        "a folder": (str(tmp_path), "a directory"),
        "not json": (_write(tmp_path / "a.json", "[1, 2,"), "cannot be parsed"),
        "an object": (_write(tmp_path / "b.json", {"ids": good}), "got a dict"),
        "empty": (_write(tmp_path / "c.json", []), "is empty"),
        "a float": (_write(tmp_path / "d.json", good[:-1] + [3.5]), "3.5 is not an integer"),
        "out of range": (_write(tmp_path / "e.json", good + [49152]), "token id 49152"),
        "negative": (_write(tmp_path / "f.json", good + [-1]), "token id -1"),
        "twice": (_write(tmp_path / "g.json", good + [good[500]]), f"token id {good[500]} is listed 2"),
        "no end token": (_write(tmp_path / "h.json", [i for i in good if i != 2]), "end tokens"),
        "no byte token": (_write(tmp_path / "i.json", [i for i in good if i != byte]), "byte tokens"),
        "everything": (_write(tmp_path / "j.json", list(range(49152))), "keeps all 49152"),
    }
    fifo = str(tmp_path / "fifo.json")
    os.mkfifo(fifo)
    cases["a FIFO"] = (fifo, "a FIFO")
    for what, (path, reason) in cases.items():
        with pytest.raises(ConfigError) as err:
            _load(eagle_draft="", vocab_reduction=path)
        msg = str(err.value)
        assert "vocab_reduction" in msg and path in msg and reason in msg, (what, msg)


def test_the_cli_flag_and_the_config_field_name_the_set():
    from edgellm_ros.cli import _engine_config, build_parser

    a = build_parser().parse_args(["generate", "--vocab-reduction", SHIPPED, "hi"])
    assert _engine_config(a).vocab_reduction == SHIPPED
    assert _engine_config(build_parser().parse_args(["generate", "hi"])).vocab_reduction == ""
    with pytest.raises(ConfigError, match="vocab_reduction must be a path"):
        EngineConfig(vocab_reduction=["a"])


@pytest.mark.parametrize("vocab", ["", SHIPPED])
def test_a_load_reads_the_tokenizer_once(default_engine_dir, monkeypatch, vocab):
    """The reduction's required ids come from the tokenizer the engine keeps (a second read
    cost about 0.2 s of configure)."""
    from edgellm_ros.runtime.tokenizer import Tokenizer
    reads = []
    real = Tokenizer.from_hf_folder.__func__

    def counted(cls, folder):
        reads.append(folder)
        return real(cls, folder)
    monkeypatch.setattr(Tokenizer, "from_hf_folder", classmethod(counted))
    from edgellm_ros.runtime.engine import Engine
    lines = []
    eng = Engine.load(EngineConfig(max_seq_len=256, prefill_chunk=64, quantization="int4",
                                   vocab_reduction=vocab), log=lines.append)
    try:
        assert reads == [eng.folder], reads
        assert any(line.startswith("vocabulary reduction") for line in lines) == bool(vocab)
    finally:
        eng.close()
