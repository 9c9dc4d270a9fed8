"""scripts/visualize.py: the page matches the activations; --find finds a planted neuron; errors."""
import re

import numpy as np
import pytest

from model.checkpoint import model_arrays, write_npz_atomic
from model.inference import Model, activations
from model.params import ParamLayout
import helpers

TEXT = ("ANNA:\nThe lord shall love the crown.\n\nBORIS:\nMy sword, my night!\n"
        "Thou and the cat (and the mat) shall sing.\n\nCLEO:\nLove.\n") * 3
HIDDEN = 4


def newline_counter_model(vocab: str) -> tuple[dict, np.ndarray]:
    """Layer 0, unit 2 counts characters since the last newline: input and output gates open,
    forget gate shut only on '\\n', g a small constant, so c (and h = tanh c) grows along a line."""
    layout = ParamLayout.for_model(len(vocab), 1, HIDDEN)
    flat = np.random.default_rng(0).normal(0, 0.3, layout.total)
    views = layout.views(flat)
    unit, H = 2, HIDDEN
    W_x, W_h, b = views["lstm0.W_x"], views["lstm0.W_h"], views["lstm0.b"]
    W_h[:, unit::H] = 0
    W_x[:, unit] = 0.0; b[unit] = 20.0                       # i open
    W_x[:, H + unit] = 0.0; b[H + unit] = 20.0               # f open ...
    W_x[vocab.index("\n"), H + unit] = -40.0                 # ... but shut on a newline
    W_x[:, 2 * H + unit] = 0.0; b[2 * H + unit] = 0.02       # g = tanh(0.02)
    W_x[:, 3 * H + unit] = 0.0; b[3 * H + unit] = 20.0       # o open
    meta = {"format": "charlstm/1", "vocab": vocab, "layers": 1, "hidden": H, "dtype": "float64"}
    return meta, flat


@pytest.fixture
def planted(tmp_path):
    vocab = "".join(sorted(set(TEXT)))
    meta, flat = newline_counter_model(vocab)
    path = tmp_path / "planted.npz"
    write_npz_atomic(str(path), model_arrays(meta, flat, "float64"))
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return str(path), str(text), Model(meta, flat)


def test_page_has_one_cell_per_character_with_matching_values(planted, tmp_path):
    path, text, model = planted
    out = tmp_path / "page.html"
    helpers.run_script("visualize.py", "--checkpoint", path, "--text", text, "--layer", 0, "--neuron", 1,
                     "--out", out)
    page = out.read_text(encoding="utf-8")
    cells = re.findall(r'<span class="c[^"]*" style="background:rgb\((\d+),(\d+),(\d+)\)" data-v="([-\d.]+)"',
                       page)
    assert len(cells) == len(TEXT)
    expected = activations(model, TEXT)["h"][0, :, 1]
    values = np.array([float(c[3]) for c in cells])
    np.testing.assert_allclose(values, expected, atol=6e-5)
    for (r, g, b, _), value in zip(cells, expected):
        other = round(255 * (1 - (value + 1) / 2))          # white at -1, red at +1
        assert (int(r), int(g), int(b)) == (255, other, other)
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//|@import|url\(", page)


def test_colour_scale_ends():
    from _neuron_page import colour
    assert colour(-1) == (255, 255, 255) and colour(1) == (255, 0, 0) and colour(5) == (255, 0, 0)


def test_find_ranks_the_planted_neuron_first(planted, tmp_path):
    path, text, _ = planted
    result = helpers.run_script("visualize.py", "--checkpoint", path, "--text", text, "--find",
                              "--out", tmp_path / "found", "--top", 3)
    line = next(l for l in result.stdout.splitlines() if l.startswith("position_since_newline"))
    rank, layer, neuron, score = line.split()[1:5]
    assert (rank, layer, neuron) == ("1", "0", "2") and float(score) > 0.95
    index = (tmp_path / "found" / "index.html").read_text()
    assert 'href="layer0_neuron2.html"' in index and (tmp_path / "found" / "layer0_neuron2.html").exists()


def test_png_of_the_picture(planted, tmp_path):
    path, text, _ = planted
    helpers.run_script("visualize.py", "--checkpoint", path, "--text", text, "--neuron", 2, "--png",
                     "--out", tmp_path / "p.html")
    assert (tmp_path / "p_l0n2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--layer", "3"], "--layer 3 is out of range"),
    (["--neuron", "0", "9"], "--neuron 9 is out of range"),
    (["--quantity", "z"], "unknown --quantity 'z'"),
    (["--checkpoint", "/none.npz"], "does not exist"),
])
def test_errors(planted, tmp_path, args, message):
    path, text, _ = planted
    if "--checkpoint" not in args:
        args = ["--checkpoint", path, *args]
    result = helpers.run_script("visualize.py", *args, "--text", text, "--out", tmp_path / "x.html", check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_text_outside_the_vocabulary_is_named(planted, tmp_path):
    path, _, _ = planted
    odd = tmp_path / "odd.txt"
    odd.write_text("ANNA: ¿qué?", encoding="utf-8")
    result = helpers.run_script("visualize.py", "--checkpoint", path, "--text", odd, check=False)
    assert result.returncode == 2 and "'¿'" in result.stderr and "'é'" in result.stderr


def test_streamed_scores_equal_the_whole_text_scores(planted):
    from model.inference import stream_activations
    from model.neurons import FeatureScores, features, rank_neurons
    _, _, model = planted
    text = TEXT * 4
    whole = rank_neurons(activations(model, text)["h"], text, top=4)
    streamed = FeatureScores(features(text))
    for start, acts in stream_activations(model, text, "h", window=37):
        streamed.add(start, acts.transpose(0, 2, 1).reshape(-1, acts.shape[1]))
    ranked = streamed.ranking(HIDDEN, top=4)
    assert ranked.keys() == whole.keys()
    for name in whole:
        assert [e[:2] for e in ranked[name]] == [e[:2] for e in whole[name]]
        np.testing.assert_allclose([e[2] for e in ranked[name]], [e[2] for e in whole[name]], atol=1e-9)


def test_find_on_a_long_text_keeps_pages_bounded_and_skips_absent_features(planted, tmp_path):
    path, _, _ = planted
    long_text = tmp_path / "long.txt"
    long_text.write_text(TEXT.replace("(", "").replace(")", "") * 300, encoding="utf-8")   # 107,100 chars
    out = tmp_path / "found"
    result = helpers.run_script("visualize.py", "--checkpoint", path, "--text", long_text, "--find",
                                "--out", out, "--excerpt", 500)
    assert "inside_brackets          not present in this text" in result.stdout
    assert "inside_quotes            not present in this text" in result.stdout
    index = (out / "index.html").read_text()
    assert "Not present in this text" in index and "107,100 characters" in index
    pages = sorted(out.glob("layer*_neuron*.html"))
    assert pages and all(p.stat().st_size < 1_000_000 for p in pages)
    cells = re.findall(r'<span class="c', pages[0].read_text())
    assert len(cells) == 500 and "first 500 of 107,100 characters" in pages[0].read_text()


def test_length_applies_to_a_text_file(planted, tmp_path):
    path, text, _ = planted
    out = tmp_path / "page.html"
    helpers.run_script("visualize.py", "--checkpoint", path, "--text", text, "--length", 50, "--out", out)
    assert len(re.findall(r'<span class="c', out.read_text())) == 50
