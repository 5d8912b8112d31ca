"""The files the package ships (drafts/, adapters/, vocab/, config/, launch/) are found from the source tree."""

import os

from edgellm_ros.runtime.resources import DEFAULT_DRAFT, resolve_draft, share_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_share_dir_of_a_source_checkout_is_the_repository():
    assert os.path.samefile(share_dir(), REPO)
    for sub in ("config", "launch", "adapters", "drafts", "vocab"):
        assert os.path.isdir(os.path.join(share_dir(), sub)), sub


def test_the_default_draft_resolves_for_the_embedded_model_only():
    path = resolve_draft("default", "")
    assert path and os.path.samefile(path, os.path.join(REPO, DEFAULT_DRAFT))
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert resolve_draft("default", "/some/other/model.gguf") == "" and resolve_draft("", "") == ""


def test_the_shipped_vocabulary_resolves_for_the_embedded_model_only():
    import pytest

    from edgellm_ros.errors import ConfigError
    from edgellm_ros.runtime.vocab import SHIPPED, SHIPPED_VOCAB, read_token_ids, resolve_vocab_path

    path = resolve_vocab_path(SHIPPED, "")
    assert os.path.samefile(path, os.path.join(REPO, SHIPPED_VOCAB)) and len(read_token_ids(path)) > 1000
    assert resolve_vocab_path("", "") == ""
    with pytest.raises(ConfigError, match="embedded default model's set"):
        resolve_vocab_path(SHIPPED, "/some/other/model.gguf")
