"""Named character-level features of a text, and ranking neurons against them.

Score: the absolute Pearson correlation, over the text, between a neuron's activation after
each character and the feature's value at that character. Constant series score 0."""
from __future__ import annotations

import re

import numpy as np

VOWELS = set("aeiouAEIOU")
PUNCTUATION = set(".,;:!?")
SPEAKER_LINE = re.compile(r"^[A-Z][A-Z '\-.]*:$")


def _line_spans(text: str):
    start = 0
    for line in text.split("\n"):
        yield start, line
        start += len(line) + 1


def features(text: str) -> dict[str, np.ndarray]:
    """Each feature as a float array with one value per character of text."""
    n = len(text)
    speaker = np.zeros(n)
    for start, line in _line_spans(text):
        if SPEAKER_LINE.match(line):
            speaker[start:start + len(line)] = 1.0
    since_newline, word_position, end_of_word = np.zeros(n), np.zeros(n), np.zeros(n)
    inside_brackets, inside_quotes, after_punct, vowel = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    column, in_word, depth, quoted = 0, 0, 0, False
    for t, ch in enumerate(text):
        column = 0 if ch == "\n" else column + 1
        since_newline[t] = column
        in_word = in_word + 1 if ch.isalpha() else 0
        word_position[t] = in_word
        end_of_word[t] = float(ch.isalpha() and (t + 1 == n or not text[t + 1].isalpha()))
        if ch in "([":
            depth += 1
        inside_brackets[t] = float(depth > 0)
        if ch in ")]":
            depth = max(0, depth - 1)
        if ch == '"':
            quoted = not quoted
        inside_quotes[t] = float(quoted or ch == '"')
        after_punct[t] = float(t > 0 and text[t - 1] in PUNCTUATION)
        vowel[t] = float(ch in VOWELS)
    return {"speaker_name_line": speaker, "position_since_newline": since_newline,
            "position_in_word": word_position, "end_of_word": end_of_word,
            "inside_brackets": inside_brackets, "inside_quotes": inside_quotes,
            "after_punctuation": after_punct, "vowel": vowel}


def correlations(activations: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Absolute Pearson correlation of each row of activations (N, T) with feature (T,)."""
    acts = activations.astype(np.float64)
    acts = acts - acts.mean(axis=1, keepdims=True)
    centred = feature - feature.mean()
    norms = np.sqrt((acts * acts).sum(axis=1)) * np.sqrt(centred @ centred)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.abs(acts @ centred) / norms
    return np.nan_to_num(scores, nan=0.0)


def rank_neurons(per_layer: np.ndarray, text: str, top: int = 5) -> dict[str, list[tuple[int, int, float]]]:
    """per_layer (L, T, H) activations -> feature name -> [(layer, neuron, score)] best first."""
    layers, steps, hidden = per_layer.shape
    flat = per_layer.transpose(0, 2, 1).reshape(layers * hidden, steps)   # (L*H, T)
    ranking = {}
    for name, values in features(text).items():
        scores = correlations(flat, values)
        best = np.argsort(-scores, kind="stable")[:top]
        ranking[name] = [(int(k // hidden), int(k % hidden), float(scores[k])) for k in best]
    return ranking
