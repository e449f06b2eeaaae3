"""Caption metrics: BLEU-4 from torchmetrics, CIDEr-D by hand (no maintained library
computes it without Java: pycocoevalcap's tokenizer runs the Stanford PTB tokenizer).

Both score word lists produced by `caption_words`, which lowercases and drops the
punctuation tokens that coco-caption's PTB tokenizer drops, so figures are comparable.
"""

from __future__ import annotations

import math
from collections import Counter


# The tokens coco-caption's PTBTokenizer removes.
PUNCTUATION = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":",
               "-", "--", "...", ";"}


def caption_words(text: str) -> list[str]:
    return [w for w in text.lower().split() if w not in PUNCTUATION]


def bleu4(candidates: list[list[str]], references: list[list[list[str]]]) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty) of word lists against reference sets."""
    from torchmetrics.functional.text import bleu_score  # ~1 s to import

    preds = [" ".join(c) for c in candidates]
    targets = [[" ".join(r) for r in refs] for refs in references]
    return float(bleu_score(preds, targets, n_gram=4))


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(candidates: list[list[str]], references: list[list[list[str]]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D (Vedantam et al., 2015) as coco-caption's CiderD computes it -> (corpus mean, per item).

    For each n-gram order, TF-IDF vectors (IDF from the reference sets of this corpus); the
    candidate's counts are clipped at the reference's (the "-D"), the cosine is damped by a
    Gaussian of the length difference (sigma), orders are averaged, references averaged, x10.
    coco-caption measures length by bigram count; for a non-empty candidate the difference
    equals the word-count difference used here.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    ref_counts = [[_ngrams(r, n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*[c.keys() for c in refs]))
    log_docs = math.log(float(len(references)))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(v * v for v in order.values())) for order in vec]
        return vec, norms

    scores = []
    for cand, refs, counts in zip(candidates, references, ref_counts):
        vec, norm = tfidf(_ngrams(cand, n))
        total = 0.0
        for ref, ref_count in zip(refs, counts):
            rvec, rnorm = tfidf(ref_count)
            penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(v, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] and rnorm[k]:
                    total += dot / (norm[k] * rnorm[k]) * penalty
        scores.append(10.0 * total / n / max(1, len(refs)))
    return sum(scores) / max(1, len(scores)), scores
