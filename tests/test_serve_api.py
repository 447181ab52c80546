"""The page's JSON API (``diffusionlab serve``), in process: what it streams and returns, that
it equals the command line it shows, and that bad requests are refused with a 4xx while the
server keeps serving and writes nothing. The browser tests are in test_serve_browser.py."""
from __future__ import annotations

import base64
import io
import json
import os
import shlex
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from diffusionlab.apps.cli import main  # noqa: E402
from diffusionlab.apps.serve import work  # noqa: E402
from diffusionlab.apps.serve.api import create_app  # noqa: E402
from diffusionlab.apps.serve.jobs import Job  # noqa: E402


@pytest.fixture(scope="module")
def app(serve_runs):
    return create_app(serve_runs, runs_label=str(serve_runs))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def events(client, job: str) -> list[tuple[str, dict]]:
    """Every event of a job's stream, in order, until its end."""
    out, name = [], None
    with client.stream("GET", f"/api/jobs/{job}/events") as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def run(client, path="/api/generate", **body) -> tuple[dict, list]:
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    return r.json(), events(client, r.json()["job"])


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def from_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return png_array(base64.b64decode(url.split(",", 1)[1]))


def test_the_list_names_each_checkpoint_with_its_kind(client, serve_runs):
    got = {c["id"]: c for c in client.get("/api/checkpoints").json()}
    assert set(got) == {"text", "class"}
    assert got["text"]["kind"] == "text" and got["text"]["encoder"] == "small" and got["text"]["has_guide"]
    assert got["class"]["kind"] == "class" and got["class"]["classes"] == [str(i) for i in range(10)]
    for c in got.values():
        assert c["process"] == "ddpm" and c["backbone"] == "unet" and c["steps_trained"] > 0
        assert c["image_shape"] == [1, 32, 32] and c["guidance"] == 2.0


def test_lora_adapters_are_listed_under_their_base_and_a_lora_run_is_no_checkpoint(client, app, serve_runs, tmp_path):
    got = {c["id"]: c for c in client.get("/api/checkpoints").json()}
    assert set(got) == {"text", "class"}                        # runs/lora-three is an adapter, not a model
    assert got["text"]["adapters"] == []
    assert got["class"]["adapters"] == [{"id": "lora-three", "base": "class", "base_matches": True, "rank": 4,
                                         "alpha": 4.0, "targets": "attn+conv", "step": 2, "data": "mnist",
                                         "digits": [3]}]
    catalog = app.state.catalog
    assert catalog.describe("lora-three") is None and catalog.resolve_adapter("lora-three") == serve_runs / "lora-three"
    # copies elsewhere: an adapter whose base is not on that server, a damaged one (left out), and
    # one whose base changed since (listed, refused when applied)
    import shutil

    from diffusionlab.apps.serve.catalog import Catalog
    from diffusionlab.errors import UserError
    from diffusionlab.models.checkpoint import find_checkpoint

    root = tmp_path / "runs"
    for src, dst in (("lora-three", "deep/moved"), ("lora-three", "deep/damaged"), ("lora-three", "lora-three"),
                     ("class", "class")):
        shutil.copytree(serve_runs / src, root / dst)
    (root / "deep" / "damaged" / "lora.json").write_text("{")
    manifest = find_checkpoint(root / "class") / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")
    other = Catalog(root)
    assert [c["id"] for c in other.list()] == ["class"]
    ads = {a["id"]: a for a in other.adapters()}
    assert set(ads) == {"deep/moved", "lora-three"}
    assert ads["deep/moved"]["base"] is None and ads["deep/moved"]["base_matches"] is None
    assert ads["lora-three"]["base"] == "class" and ads["lora-three"]["base_matches"] is False
    with pytest.raises(UserError, match="changed since") as e:
        other.load("class", lora=(("lora-three", 1.0),))
    assert e.value.param == "lora"


def test_a_lora_generation_is_the_base_at_scale_0_differs_at_scale_1_and_its_command_reproduces_it(
        client, serve_runs, tmp_path):
    body = {"checkpoint": "class", "class": 3, "seed": 4, "sampler": "ddim", "steps": 3, "batch": 2}
    _, base = run(client, **body)
    _, zero = run(client, **body, lora=[{"id": "lora-three", "scale": 0}])
    head, one = run(client, **body, lora=[{"id": "lora-three", "scale": 1}])
    assert zero[-1][0] == one[-1][0] == "done"
    np.testing.assert_array_equal(from_data_url(zero[-1][1]["image"]), from_data_url(base[-1][1]["image"]))
    assert not np.array_equal(from_data_url(one[-1][1]["image"]), from_data_url(base[-1][1]["image"]))
    assert f"--lora {serve_runs}/lora-three:1 " in head["command"]
    info = Image.open(io.BytesIO(client.get(one[-1][1]["png"]).content)).text
    assert json.loads(info["parameters"])["lora"] == [{"id": "lora-three", "scale": 1.0}]
    args = shlex.split(head["command"])                         # the command line shown makes the same images
    npy = tmp_path / "x.npy"
    assert main(args[1:-2] + ["--out", str(tmp_path / "s.png"), "--npy", str(npy)]) == 0
    x = torch.from_numpy(np.load(npy))
    np.testing.assert_array_equal(png_array(client.get(one[-1][1]["images"][1]).content), work.grid_array(x[1:2]))
    edit, ev = run(client, "/api/img2img", checkpoint="class", image={"digit": 4}, strength=0.5, steps=2,
                   lora=[{"id": "lora-three", "scale": -0.35}])
    assert ev[-1][0] == "done" and "--lora" in edit["command"] and "lora-three:-0.35" in edit["command"]


@pytest.mark.parametrize("aid", ["../class", "/etc", "..", "lora-three/..", "lora-three/checkpoints", "", "text",
                                 "outside", "C:\\x", "lora-three\x00", "./lora-three"])
def test_lora_ids_that_name_no_adapter_on_the_server_are_refused(client, aid):
    r = client.post("/api/generate", json={"checkpoint": "class", "lora": [{"id": aid, "scale": 1}]})
    assert r.status_code in (400, 404), (aid, r.text)
    assert r.json()["error"].startswith("lora: ")


def test_a_generation_streams_every_step_then_the_image_the_command_line_reproduces(client, serve_runs, tmp_path):
    head, ev = run(client, checkpoint="text", prompt="a handwritten two", seed=5, sampler="euler", steps=6, batch=3)
    names = [n for n, _ in ev]
    assert names[0] == "queued" and names[1] == "start" and names[-1] == "done"
    steps = [d for n, d in ev if n == "step"]
    assert [d["i"] for d in steps] == list(range(6)) and names.index("done") > names.index("step")
    start = ev[1][1]
    assert start["sampler"] == "euler" and len(start["sigmas"]) == 7 and start["command"] == head["command"]
    for d in steps:                                       # x_t and the predicted x0 of the batch, as PNGs
        assert from_data_url(d["x_t"]).shape == from_data_url(d["x0"]).shape == (67, 67)
        assert d["nfe"] == d["i"] + 1
    done = ev[-1][1]
    grid = png_array(client.get(done["png"]).content)
    assert grid.shape == (67, 67)                         # 2 x 2 grid of 32 px, padding 1
    info = Image.open(io.BytesIO(client.get(done["png"]).content)).text
    assert json.loads(info["parameters"])["seed"] == 5 and info["diffusionlab-command"] == head["command"]
    # the command line shown reproduces the images exactly
    args = shlex.split(head["command"])
    assert args[:2] == ["diffusionlab", "sample"]
    npy = tmp_path / "x.npy"
    assert main(args[1:-2] + ["--out", str(tmp_path / "s.png"), "--npy", str(npy)]) == 0
    x = torch.from_numpy(np.load(npy))
    for i in range(3):
        np.testing.assert_array_equal(png_array(client.get(done["images"][i]).content), work.grid_array(x[i:i + 1]))
    # the same seed again: the same bytes; another seed: other images
    again = run(client, checkpoint="text", prompt="a handwritten two", seed=5, sampler="euler", steps=6, batch=3)[1][-1][1]
    assert client.get(again["png"]).content == client.get(done["png"]).content
    other = run(client, checkpoint="text", prompt="a handwritten two", seed=6, sampler="euler", steps=6, batch=3)[1][-1][1]
    assert not np.array_equal(png_array(client.get(other["png"]).content), grid)
    gif = client.get(done["gif"])
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"


def test_class_models_take_a_class_and_a_negative_class_and_defaults_apply(client):
    head, ev = run(client, **{"checkpoint": "class", "class": "3", "negative_class": 5, "seed": 1, "batch": 2})
    assert ev[-1][0] == "done" and "--class 3 --negative-class 5" in head["command"]
    assert head["sampler"] == "unipc" and head["steps"] == 4          # the checkpoint's recorded defaults
    assert len([1 for n, _ in ev if n == "step"]) == 4


def test_the_guidance_view_computes_both_predictions_of_the_model_itself(client, app):
    head, ev = run(client, checkpoint="text", prompt="a handwritten seven", seed=2, sampler="ddim", steps=5, batch=2,
                   guidance=3.0)
    start = ev[1][1]
    for step in (0, 3):
        g = client.post("/api/guidance", json={"job": head["job"], "step": step}).json()
        assert g["scale"] == 3.0 and g["sigma"] == start["sigmas"][step]
        for k in ("uncond", "cond", "difference", "guided", "x0_guided", "x_t"):
            assert from_data_url(g[k]).shape == (34, 67)             # 2 images in a row, padding 1
    # the relation the view shows, on the arrays it is computed from
    job = app.state.queue.get(head["job"])
    p = job.result["plan"]
    x, sigma = job.result["traj"][2].float(), job.result["sigmas"][2]
    sig = torch.full((2,), sigma)
    d_c = p.base(x, sig, p.conditioning(2))
    d_u = p.base(x, sig, p.base.info.null_cond(2))
    torch.testing.assert_close(p.guided(x, sig, p.conditioning(2)), d_u + 3.0 * (d_c - d_u), atol=1e-4, rtol=1e-4)
    bad = client.post("/api/guidance", json={"job": head["job"], "step": 5})
    assert bad.status_code == 400 and "outside" in bad.json()["error"]


def test_img2img_and_inpainting_stream_and_keep_what_they_should(client):
    digit = work.grid_array(work.dataset_digit(4, 32)[None])
    _, ev = run(client, "/api/inpaint", checkpoint="class", image={"digit": 4}, mask="right", seed=3, batch=1,
                sampler="ddim", steps=4)
    assert ev[-1][0] == "done" and any(n == "step" for n, _ in ev)
    out = from_data_url(ev[-1][1]["image"])
    np.testing.assert_array_equal(out[:, :16], digit[:, :16])              # kept outside the mask
    assert np.abs(out[:, 16:].astype(int) - digit[:, 16:]).max() > 0
    head, ev = run(client, "/api/inpaint", checkpoint="class", image={"digit": 4}, mask={"rect": [4, 4, 20, 12]},
                   seed=3, sampler="ddim", steps=3)
    assert "--mask 4,4,20,12" in head["command"]
    out = from_data_url(ev[-1][1]["image"])
    np.testing.assert_array_equal(out[12:], digit[12:])
    _, ev = run(client, "/api/img2img", checkpoint="class", image={"digit": 4}, strength=0.0, seed=3)
    np.testing.assert_array_equal(from_data_url(ev[-1][1]["image"]), digit)   # strength 0: the input
    _, ev = run(client, "/api/img2img", checkpoint="text", image={"png": _png_b64(40, 30)}, strength=0.5, steps=6,
                prompt="a one")
    assert [n for n, _ in ev].count("step") == 3 and from_data_url(ev[-1][1]["image"]).shape == (32, 32)


def test_the_forward_process_view_is_q_sample_on_the_chosen_schedule(client):
    from diffusionlab.core.schedules import DiscreteSchedule

    for schedule in ("linear", "cosine", "quadratic", "sigmoid", "exponential", "constant"):
        r = client.post("/api/forward", json={"image": {"digit": 0}, "schedule": schedule, "t": 250}).json()
        abar = float(DiscreteSchedule.from_name(schedule, 1000).abar[249])
        assert r["abar"] == pytest.approx(abar) and r["sigma"] == pytest.approx(((1 - abar) / abar) ** 0.5)
        assert r["snr"] == pytest.approx(abar / (1 - abar)) and len(r["curve"]["t"]) == len(r["curve"]["abar"])
    clean = client.post("/api/forward", json={"image": {"digit": 0}, "t": 0}).json()
    np.testing.assert_array_equal(from_data_url(clean["x_t"]), from_data_url(clean["x0"]))
    assert clean["snr"] == "inf"
    up = client.post("/api/forward", json={"image": {"png": _png_b64(50, 70, rgb=True)}, "t": 10}).json()
    assert from_data_url(up["x_t"]).shape == (32, 32, 3)
    assert client.post("/api/forward", json={"image": {"digit": 0}, "t": 1001}).status_code == 400
    assert client.post("/api/forward", json={"image": {"digit": 0}, "t": 3, "schedule": "nope"}).status_code == 422


def test_tokens_and_the_architecture_come_from_the_checkpoint(client):
    t = client.post("/api/tokens", json={"checkpoint": "text", "prompt": "a two"}).json()
    assert t["encoder"] == "small" and t["tokens"] == ["<s>", *"a two", "</s>"] and not t["truncated"]
    long = client.post("/api/tokens", json={"checkpoint": "text", "prompt": "x" * 100}).json()
    assert long["truncated"] and len(long["tokens"]) == long["max_tokens"] and len(long["dropped"]) == 102 - 64
    assert long["tokens"][-1] == "</s>"
    assert client.post("/api/tokens", json={"checkpoint": "class", "prompt": "a"}).status_code == 400
    m = client.get("/api/model", params={"checkpoint": "text"}).json()
    names = [s["name"] for s in m["stages"]]
    assert names[:3] == ["tokenizer", "text encoder", "conditioning"] and names[-2:] == ["sampler loop", "image"]
    blocks = {b["name"]: b for b in m["blocks"]}
    assert any(b["cross_attention"] for b in blocks.values()) and any(b["attention"] for b in blocks.values())
    assert blocks["init_conv"]["out_shape"][1:] != blocks["init_conv"]["in_shape"][1:]
    assert 0 < sum(b["params"] for b in m["blocks"]) <= m["total_params"]
    c = client.get("/api/model", params={"checkpoint": "class"}).json()
    assert not any(b["cross_attention"] for b in c["blocks"]) and c["stages"][0]["name"] == "conditioning"


def test_minilm_prompts_are_shown_as_word_pieces():
    pytest.importorskip("sentence_transformers")
    got = work.prompt_tokens("minilm", "a handwritten seven")
    assert got["tokens"][0] == "[CLS]" and "seven" in got["tokens"] and got["tokens"][-1] == "[SEP]"
    long = work.prompt_tokens("minilm", " ".join(["seven"] * 80))
    assert long["truncated"] and len(long["tokens"]) == 64 and long["dropped"]


BAD = [  # (route, body, status, words in the message)
    ("/api/generate", {"checkpoint": "text", "batch": 17}, 422, "batch"),
    ("/api/generate", {"checkpoint": "text", "batch": 0}, 422, "batch"),
    ("/api/generate", {"checkpoint": "text", "steps": 400, "sampler": "heun"}, 400, "500"),
    ("/api/generate", {"checkpoint": "text", "steps": 5, "sampler": "annealed_langevin"}, 400, "500"),
    ("/api/generate", {"checkpoint": "text", "prompt": "x" * 1025}, 422, "1024"),
    ("/api/generate", {"checkpoint": "text", "negative_prompt": "x" * 1025}, 422, "1024"),
    ("/api/generate", {"checkpoint": "text", "colour": "red"}, 422, "unknown key"),
    ("/api/generate", {"checkpoint": "text", "seed": -1}, 422, "seed"),
    ("/api/generate", {"checkpoint": "text", "seed": "abc"}, 422, "seed"),
    ("/api/generate", {"checkpoint": "text", "guidance": float("nan")}, 422, "finite"),
    ("/api/generate", {"checkpoint": "text", "guidance_rescale": 2}, 422, "rescale"),
    ("/api/generate", {"checkpoint": "text", "guidance_interval": [5, 1]}, 400, "interval"),
    ("/api/generate", {"checkpoint": "text", "sampler": "nope"}, 422, "unknown sampler"),
    ("/api/generate", {"checkpoint": "text", "class": 3}, 400, "class: this checkpoint is text-conditional"),
    ("/api/generate", {"checkpoint": "class", "class": 10}, 400, "outside"),
    ("/api/generate", {"checkpoint": "class", "autoguidance": 2.0}, 400, "guide snapshot"),
    ("/api/generate", {"prompt": "x"}, 422, "checkpoint"),
    ("/api/generate", [1, 2], 400, "JSON object"),
    ("/api/img2img", {"checkpoint": "class", "image": {"digit": 99}, "strength": 0.5}, 400, "0..63"),
    ("/api/img2img", {"checkpoint": "class", "image": {"path": "/etc/passwd"}, "strength": 0.5}, 400, "digit"),
    ("/api/img2img", {"checkpoint": "class", "image": {"png": "bm90IGFuIGltYWdl"}}, 400, "not an image"),
    ("/api/img2img", {"checkpoint": "class", "image": {"png": "!!!"}}, 400, "base64"),
    ("/api/inpaint", {"checkpoint": "class", "image": {"digit": 1}, "mask": "middle"}, 400, "mask"),
    ("/api/inpaint", {"checkpoint": "class", "image": {"digit": 1}, "mask": {"rect": [0, 0, 40, 5]}}, 400, "rectangle"),
    ("/api/inpaint", {"checkpoint": "class", "image": {"digit": 1}, "mask": "left", "steps": 300}, 400, "500"),
    ("/api/guidance", {"job": "nope", "step": 0}, 404, "no job"),
    ("/api/forward", {"image": {"digit": 0}, "t": 5, "timesteps": 10 ** 6}, 422, "timesteps"),
    ("/api/tokens", {"checkpoint": "text", "prompt": "y" * 2000}, 422, "1024"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "lora-three", "weight": 1}]}, 422,
     "lora.0.weight: unknown key"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"scale": 1}]}, 422, "lora.0.id"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "lora-three", "scale": 2.5}]}, 422, "lora.0.scale"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "lora-three", "scale": float("inf")}]}, 422, "finite"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "lora-three"}] * 5}, 422, "lora"),
    ("/api/generate", {"checkpoint": "class", "lora": {"id": "lora-three"}}, 422, "lora"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "x" * 513}]}, 422, "lora.0.id"),
    ("/api/generate", {"checkpoint": "text", "lora": [{"id": "lora-three"}]}, 400,
     "lora: the LoRA adapter 'lora-three' was trained on 'class', not on 'text'"),
    ("/api/img2img", {"checkpoint": "text", "image": {"digit": 1}, "lora": [{"id": "lora-three"}]}, 400, "lora:"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "nope"}]}, 404, "lora: no LoRA adapter"),
    ("/api/generate", {"checkpoint": "class", "lora": [{"id": "class"}]}, 404, "lora: no LoRA adapter"),
]
TRAVERSAL = ["../text", "/etc/passwd", "..", ".", "text/../../x", "%2e%2e/text", "text/..", "text//", "C:\\x",
             "text\\..\\..", "./text", "text/checkpoints/../", "", "\x00text", "outside", "inner/../outside"]


@pytest.mark.parametrize("route,body,status,words", BAD, ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)])
def test_bad_requests_are_refused_with_a_clear_4xx(client, route, body, status, words):
    r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})  # NaN as JSON's NaN
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()


def test_path_traversal_in_checkpoint_ids_never_leaves_the_runs_folder(serve_runs, tmp_path):
    outside = tmp_path / "secret"
    assert main(["train", "--preset", "tiny", "--steps", "1", "--out", str(outside), "--no-progress"]) == 0 \
        if not (outside / "checkpoints").exists() else True
    link = serve_runs / "outside"
    if not link.exists():
        os.symlink(outside, link)                       # a symlink inside --runs pointing outside
    inner = serve_runs / "inner"
    inner.mkdir(exist_ok=True)
    try:
        with TestClient(create_app(serve_runs)) as c:
            assert "outside" not in {x["id"] for x in c.get("/api/checkpoints").json()}
            for cid in TRAVERSAL:
                for r in (c.post("/api/generate", json={"checkpoint": cid}),
                          c.get("/api/model", params={"checkpoint": cid}),
                          c.post("/api/tokens", json={"checkpoint": cid, "prompt": "a"})):
                    assert r.status_code in (400, 404, 422), (cid, r.status_code)
                    assert "error" in r.json()
            for path in ("/static/..%2f..%2fpyproject.toml", "/static/%2e%2e/work.py",
                         "/static/app.js%00", "/api/jobs/..%2f..%2fetc%2fpasswd/result.png"):
                r = c.get(path)
                assert r.status_code in (400, 404) and b"[project]" not in r.content, path
            assert c.get("/api/health").json()["ok"]    # still serving
    finally:
        link.unlink()


def test_uploads_are_checked_before_they_are_decoded(client):
    big = base64.b64encode(os.urandom(2 * 1024 * 1024 + 10)).decode()
    r = client.post("/api/forward", json={"image": {"png": big}, "t": 5})
    assert r.status_code in (400, 413) and "bytes" in r.json()["error"]
    huge = _png_b64(3000, 20)                            # a few hundred bytes, 3000 px wide
    r = client.post("/api/forward", json={"image": {"png": huge}, "t": 5})
    assert r.status_code == 400 and "1024" in r.json()["error"]
    bomb = _png_b64(20000, 20000, mode="1")              # 50 KB of PNG, 400 megapixels decoded
    r = client.post("/api/img2img", json={"checkpoint": "class", "image": {"png": bomb}})
    assert r.status_code == 400 and "1024" in r.json()["error"]
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    assert client.post("/api/forward", json={"image": {"png": svg}, "t": 5}).status_code == 400
    assert client.post("/api/forward", content=b"x" * (4 * 1024 * 1024), headers={"content-type": "application/json"}
                       ).status_code == 413


def test_bad_requests_write_nothing_and_the_server_keeps_serving(client, serve_runs, tmp_path):
    before = sorted(str(p) for p in serve_runs.rglob("*"))
    cwd = sorted(os.listdir("."))
    for route, body, *_ in BAD:
        client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    client.post("/api/generate", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert sorted(str(p) for p in serve_runs.rglob("*")) == before and sorted(os.listdir(".")) == cwd
    assert run(client, checkpoint="class", seed=0, steps=2)[1][-1][0] == "done"


def test_a_full_queue_answers_503_with_retry_after_and_a_cancelled_job_frees_its_place(serve_runs):
    with TestClient(create_app(serve_runs, depth=1)) as c:
        queue = c.app.state.queue
        gate = threading.Event()
        blocker = Job(lambda job: gate.wait(30))
        queue.submit(blocker)
        _wait(lambda: blocker.state == "running")
        first = c.post("/api/generate", json={"checkpoint": "class", "steps": 2})
        assert first.status_code == 202 and first.json()["position"] == 1
        assert c.get(f"/api/jobs/{first.json()['job']}").json()["position"] == 1
        full = c.post("/api/generate", json={"checkpoint": "class", "steps": 2})
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1 and "busy" in full.json()["error"]
        assert c.delete(f"/api/jobs/{first.json()['job']}").json()["state"] == "cancelled"
        again = c.post("/api/generate", json={"checkpoint": "class", "steps": 2})
        assert again.status_code == 202
        gate.set()
        assert events(c, again.json()["job"])[-1][0] == "done"


def test_a_client_that_goes_away_stops_its_generation(serve_runs):
    with TestClient(create_app(serve_runs)) as c:
        r = c.post("/api/generate", json={"checkpoint": "class", "sampler": "euler", "steps": 400, "batch": 16})
        job = c.app.state.queue.get(r.json()["job"])
        with c.stream("GET", r.json()["events"]) as s:
            for line in s.iter_lines():
                if line == "event: step":
                    break
        _wait(lambda: job.over)
        assert job.state == "cancelled" and sum(n == "step" for n, _ in job.events) < 400


def test_a_token_guards_every_route(serve_runs):
    with TestClient(create_app(serve_runs, token="s3cret")) as c:
        for path in ("/", "/api/checkpoints", "/static/app.js", "/api/health"):
            assert c.get(path).status_code == 401
        assert c.post("/api/generate", json={"checkpoint": "class"}).status_code == 401
        assert c.get("/api/checkpoints", params={"token": "wrong"}).status_code == 401
        assert c.get("/api/checkpoints", params={"token": "s3cret"}).status_code == 200
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/health", headers={"X-Token": "s3cret"}).status_code == 200


def test_the_page_is_served_with_every_asset_and_no_outside_host(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    import re

    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(not r.startswith(("http:", "https:", "//")) for r in refs)
    for r in refs:
        assert client.get(r).status_code == 200, r
    static = Path(work.__file__).parent / "static"
    for f in static.iterdir():
        text = f.read_text(errors="replace")
        assert not re.search(r"(?:https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}", text), f.name
    assert client.get("/", headers={"host": "evil.example:7860"}).status_code == 400   # DNS rebinding


def test_serve_refuses_an_open_host_without_a_token(capsys, serve_runs):
    assert main(["serve", "--runs", str(serve_runs), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--runs", str(serve_runs / "missing")]) == 2


def test_serve_starts_on_a_free_port_and_stops_on_ctrl_c(serve_runs):
    import urllib.request

    from serve_helpers import server

    with server(serve_runs) as (url, proc):
        assert json.load(urllib.request.urlopen(url + "api/health"))["ok"]
        assert len(json.load(urllib.request.urlopen(url + "api/checkpoints"))) >= 2
    assert proc.returncode == 130


def _wait(cond, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _png_b64(w: int, h: int, rgb: bool = False, mode: str | None = None) -> str:
    img = Image.new(mode or ("RGB" if rgb else "L"), (w, h), color=0 if mode == "1" else (90 if not rgb else (10, 200, 30)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def test_the_guard_stops_a_cancelled_or_runaway_run_at_its_next_evaluation():
    from diffusionlab.apps.serve.jobs import Cancelled
    from diffusionlab.errors import UserError

    job = Job(lambda j: None)
    guard = work._Guard(lambda x, sigma, cond=None: 0 * x, job)
    x, s = torch.zeros(1, 1, 2, 2), torch.ones(1)
    for _ in range(work.MAX_NFE):
        guard(x, s)
    with pytest.raises(UserError, match="500 network evaluations"):   # an adaptive sampler past the limit
        guard(x, s)
    job.cancel()
    with pytest.raises(Cancelled):
        work._Guard(lambda x, sigma, cond=None: x, job)(x, s)


def test_the_architecture_view_reads_a_dit_too():
    from diffusionlab.models.processes import PROCESSES, DiffusionConfig, fill
    from diffusionlab.nn import build_network

    net = build_network("dit", dict(channels=1, patch_size=4, hidden=32, depth=2, heads=2, num_classes=10))
    den = PROCESSES["ddpm"].denoiser(net, fill(DiffusionConfig(process="ddpm"), (1, 32, 32)), None,
                                     {"image_shape": (1, 32, 32)})
    blocks = {b["name"]: b for b in work._blocks(net, den, den.info)}
    assert blocks["patchify"]["out_shape"] == [1, 32, 8, 8]
    assert blocks["blocks.0"]["attention"] and blocks["blocks.1"]["in_shape"] == [1, 64, 32]
    assert sum(b["params"] for b in blocks.values()) == sum(p.numel() for p in net.parameters())
