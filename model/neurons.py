"""Named character-level features of a text, and ranking neurons against them.

Score: the absolute Pearson correlation, over the text, between a neuron's activation after
each character and the feature's value at that character. A feature that is constant over the
text is not present in it and is not ranked; a constant neuron scores 0."""
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
    """Each feature as a float32 array with one value per character of text."""
    n = len(text)

    def zeros() -> np.ndarray:
        return np.zeros(n, np.float32)
    speaker = zeros()
    for start, line in _line_spans(text):
        if SPEAKER_LINE.match(line):
            speaker[start:start + len(line)] = 1.0
    since_newline, word_position, end_of_word = zeros(), zeros(), zeros()
    inside_brackets, inside_quotes, after_punct, vowel = zeros(), zeros(), zeros(), zeros()
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


class FeatureScores:
    """Running sums for the Pearson correlation of every neuron with every feature, fed window
    by window, so memory does not grow with the text: the features are centred once (their
    means are known up front), each neuron is shifted by its first window's mean, and then
    cov = sum(x' * f_centred) exactly, var_x from the shifted sums."""

    def __init__(self, feature_values: dict[str, np.ndarray]):
        self.names = list(feature_values)
        steps = len(next(iter(feature_values.values())))
        self.centred = np.empty((len(self.names), steps))                               # (K, T)
        for row, name in zip(self.centred, self.names):
            row[:] = feature_values[name]
            row -= row.mean()
        self.feature_ss = np.einsum("kt,kt->k", self.centred, self.centred)            # (K,)
        self.count = 0
        self.shift = self.sum_x = self.sum_x2 = self.sum_xf = None

    @property
    def present(self) -> list[str]:
        """Features that vary over the text; a constant one says nothing about any neuron."""
        return [n for n, ss in zip(self.names, self.feature_ss) if ss > 0]

    def add(self, start: int, acts: np.ndarray) -> None:
        """acts (N, w): N neurons' activations after characters start .. start+w-1."""
        x = acts.astype(np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=1)
            neurons = x.shape[0]
            self.sum_x, self.sum_x2 = np.zeros(neurons), np.zeros(neurons)
            self.sum_xf = np.zeros((neurons, len(self.names)))
        x -= self.shift[:, None]
        self.sum_x += x.sum(axis=1)
        self.sum_x2 += np.einsum("nt,nt->n", x, x)
        self.sum_xf += x @ self.centred[:, start:start + x.shape[1]].T                 # (N, K)
        self.count += x.shape[1]

    def scores(self) -> np.ndarray:
        """(N, K) absolute correlations; 0 where a neuron or a feature is constant."""
        var_x = np.maximum(self.sum_x2 - self.sum_x ** 2 / self.count, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.abs(self.sum_xf) / np.sqrt(np.outer(var_x, self.feature_ss))
        return np.nan_to_num(scores, nan=0.0, posinf=0.0)

    def ranking(self, hidden: int, top: int = 5) -> dict[str, list[tuple[int, int, float]]]:
        """Present feature -> [(layer, neuron, score)] best first, neurons numbered layer-major."""
        scores = self.scores()
        ranking = {}
        for k, name in enumerate(self.names):
            if name in self.present:
                best = np.argsort(-scores[:, k], kind="stable")[:top]
                ranking[name] = [(int(n // hidden), int(n % hidden), float(scores[n, k])) for n in best]
        return ranking


def rank_neurons(per_layer: np.ndarray, text: str, top: int = 5) -> dict[str, list[tuple[int, int, float]]]:
    """per_layer (L, T, H) activations -> present feature -> [(layer, neuron, score)] best first."""
    layers, steps, hidden = per_layer.shape
    scores = FeatureScores(features(text))
    scores.add(0, per_layer.transpose(0, 2, 1).reshape(layers * hidden, steps))       # (L*H, T)
    return scores.ranking(hidden, top)
