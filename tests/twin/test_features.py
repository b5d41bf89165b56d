"""Feature extraction with real inference on the offline models."""

import numpy as np
import pytest

from twin import DataError, FeatureCache, FeatureModelError, TextFeatureExtractor
from twin.features import length_features, word_frequency_features

from ..conftest import synthetic_sentences

SENTENCES = [
    "The children played in the park after school.",
    "A bicycle is a vehicle with two wheels.",
    "She opened the window to let in the cool evening air.",
    "Rain.",
]


@pytest.fixture(scope="module")
def smol():
    return TextFeatureExtractor("smollm2-135m")


def test_shapes_and_determinism(smol):
    a = smol.extract(SENTENCES, layers=[2, 8], pooling=("mean", "last"), surprisal=True)
    b = smol.extract(SENTENCES, layers=[2, 8], pooling=("mean", "last"), surprisal=True)
    assert set(a) == {"mean/L2", "mean/L8", "last/L2", "last/L8", "surprisal"}
    assert a["mean/L8"].shape == (4, smol.text_model.hidden_size)
    assert a["surprisal"].shape == (4, 3)
    for key in a:
        assert np.array_equal(a[key], b[key])
        assert np.isfinite(a[key]).all()
    assert not np.allclose(a["mean/L8"], a["last/L8"])


def test_early_stop_gives_the_full_pass_values(smol):
    stopped = smol.extract(SENTENCES, layers=[6], pooling="mean")
    full = smol.extract(SENTENCES, layers=[6], pooling="mean", surprisal=True)
    assert np.allclose(stopped["mean/L6"], full["mean/L6"], atol=1e-5)


def test_batch_composition_does_not_change_features(smol):
    together = smol.extract(SENTENCES, layers=[8], pooling="last")["last/L8"]
    alone = np.vstack([smol.extract([s], layers=[8], pooling="last")["last/L8"] for s in SENTENCES])
    assert np.allclose(together, alone, atol=1e-4)


def test_surprisal_separates_natural_from_scrambled(smol):
    natural = "The old farmer walked slowly across the muddy field to feed his cows."
    words = natural.rstrip(".").split()
    scrambled = " ".join(words[::2] + words[1::2][::-1]) + "."
    s = smol.extract([natural, scrambled], surprisal=True)["surprisal"]
    mean, total, peak = s.T
    assert mean[0] + 1.0 < mean[1]
    assert (peak >= mean).all() and (total >= peak).all()


def test_cache_hits_skip_the_model(tmp_path):
    cache = FeatureCache(tmp_path / "f.h5")
    first = TextFeatureExtractor("smollm2-135m", cache=cache)
    a = first.extract(SENTENCES, layers=[4], pooling="last", surprisal=True)
    fresh = TextFeatureExtractor("smollm2-135m", cache=FeatureCache(tmp_path / "f.h5"))
    b = fresh.extract(SENTENCES[::-1], layers=[4], pooling="last", surprisal=True)
    assert fresh._model is None  # every row came from the cache
    assert np.array_equal(a["last/L4"][::-1], b["last/L4"])
    # A partial hit computes only the new sentence and keeps the order.
    c = fresh.extract([SENTENCES[0], "A new sentence appears here."], layers=[4], pooling="last")
    assert np.array_equal(c["last/L4"][0], a["last/L4"][0])
    assert fresh._model is not None


def test_corrupt_cache_is_moved_aside(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"this is not an HDF5 file")
    ex = TextFeatureExtractor("minilm", cache=FeatureCache(path))
    out = ex.extract(SENTENCES[:2], layers=[3])
    assert out["mean/L3"].shape == (2, 384)
    assert list(tmp_path.glob("f.corrupt-*.h5"))


def test_a_cache_never_writes_into_another_kind_of_file(tmp_path):
    """A session file, anyone's HDF5 data or a folder given as the cache: CacheError naming it, the file (or
    folder) left as it was; a cache written before caches carried their format attribute still serves."""
    import h5py

    from twin.errors import CacheError

    session, data = tmp_path / "session.h5", tmp_path / "data.h5"
    with h5py.File(session, "w") as f:
        f.attrs["format"] = "neurotwin.session"
        f["events"] = np.arange(3)
    with h5py.File(data, "w") as f:
        f["x"] = np.arange(3)
    before = {p: p.read_bytes() for p in (session, data)}
    for path, message in [(session, "its format is 'neurotwin.session'"), (data, "it holds other data")]:
        with pytest.raises(CacheError, match=f"'{path}' is an HDF5 file but not a feature cache \\({message}\\)"):
            TextFeatureExtractor("minilm", cache=FeatureCache(path)).extract(SENTENCES[:1], layers=[3])
    assert {p: p.read_bytes() for p in before} == before
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(CacheError, match="is a folder"):
        TextFeatureExtractor("minilm", cache=FeatureCache(folder)).extract(SENTENCES[:1], layers=[3])
    assert folder.is_dir() and list(folder.iterdir()) == [] and not list(tmp_path.glob("*corrupt*"))
    legacy = tmp_path / "legacy.h5"
    first = TextFeatureExtractor("minilm", cache=FeatureCache(legacy)).extract(SENTENCES[:2], layers=[3])
    with h5py.File(legacy, "a") as f:
        assert f.attrs["format"] == "neurotwin.features"
        del f.attrs["format"]
    again = TextFeatureExtractor("minilm", cache=FeatureCache(legacy))
    assert np.array_equal(again.extract(SENTENCES[:2], layers=[3])["mean/L3"], first["mean/L3"])
    assert again._model is None  # served from the cache, not computed


def test_sentence_encoder_and_its_limits():
    ex = TextFeatureExtractor("minilm")
    out = ex.extract(synthetic_sentences(5), layers=range(0, 7), pooling="mean")
    assert len(out) == 7 and out["mean/L6"].shape == (5, 384)
    with pytest.raises(FeatureModelError, match="causal"):
        ex.extract(SENTENCES, surprisal=True)
    with pytest.raises(FeatureModelError, match="out of range"):
        ex.extract(SENTENCES, layers=[9])
    with pytest.raises(DataError, match="tokens long"):
        ex.extract(["word " * 600], layers=[1])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FeatureModelError, match="unknown feature model 'no-such-model-xyz'"):
        TextFeatureExtractor("no-such-model-xyz").extract(SENTENCES, layers=[1])


def test_model_info_reads_a_folders_config_as_transformers_does(tmp_path):
    import subprocess
    import sys

    from transformers import AutoConfig, GPT2Config, T5Config

    from twin.models import ModelInfo, model_info, resolve_model

    def via_transformers(source):
        c = AutoConfig.from_pretrained(source)
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in c.architectures or [])
        return ModelInfo(c.num_hidden_layers, causal, c.hidden_size)

    GPT2Config(n_layer=3, n_embd=64, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path / "gpt2")
    T5Config(num_layers=2, d_model=32, architectures=["T5ForConditionalGeneration"]).save_pretrained(tmp_path / "t5")
    for name in ("minilm", str(tmp_path / "gpt2"), str(tmp_path / "t5")):  # t5: names AutoConfig maps
        assert model_info(name) == via_transformers(resolve_model(name)[1]), name
    assert model_info(str(tmp_path / "gpt2")) == (3, True, 64)
    # A local config.json is read without importing transformers (seconds of `protocol check`).
    code = "import sys; from twin.models import model_info; model_info('minilm'); print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_length_and_frequency():
    L = length_features(["one two three", "a"])
    assert L.tolist() == [[3, 13], [1, 1]]
    f = word_frequency_features(["the cat sat", "zyzzyva quixotic"])
    assert f[0, 0] > f[1, 0]
