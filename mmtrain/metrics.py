"""Metrics a paper can quote: caption scores equal to coco-caption's (pycocoevalcap), and
accuracy / macro-F1 / confusion equal to scikit-learn's, in a few tensor operations (no
torchmetrics: importing it costs seconds of a run's first validation).

`caption_scores` takes raw caption text, tokenizes it as coco-caption does (Stanford
PTBTokenizer 3.4.1 with `-lowerCase`, then its punctuation tokens dropped), and returns
BLEU-1..4, ROUGE-L and CIDEr-D computed the way pycocoevalcap's Bleu, Rouge and Cider
scorers compute them. METEOR and SPICE need Java and are left out. Pure Python, no Java,
no torch: anyone can score any captions with it.

    >>> caption_scores({1: "A b c d e."}, {1: ["a b c d e f", "a b c d"]})["bleu4"]
    0.99999...
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Hashable, Mapping, Sequence

if TYPE_CHECKING:
    import torch


def lower_is_better(metric: str) -> bool:
    """Whether a metric ranks low-is-better by its name alone: a loss (`loss`, `image_loss`,
    `pretrain/val/loss`). Training's monitor and `mmtrain report` both ask here, so a
    run's best.pt and the report's ranking never disagree."""
    return metric.rsplit("/", 1)[-1].endswith("loss")

# Tokens coco-caption's PTBTokenizer wrapper drops after tokenizing. It compares them with the
# already lower-cased output, so "-LRB-" and friends never match there: a bracket survives as
# "-lrb-", and so it does here.
PUNCTUATION = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                         "-", "--", "...", ";"})

_L = r"[^\W\d_]"          # a letter
_A = r"[^\W_]"            # a letter or digit
_WORD = rf"{_L}{_A}*(?:[.!?]{_L}{_A}*)*"
_REDAUX = r"['\u2019](?:[msd]|re|ve|ll)"
_ABTITLE = (r"mr|mrs|ms|(?-i:M)iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|"
            r"cpl|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|"
            r"ens|insp|mlle|mme|msgr|sfc")
_ABSTATE = (r"ala|ariz|(?-i:A)z|(?-i:A)rk|calif|colo|conn|ct|dak|(?-i:D)el|fla|ga|(?-i:I)ll|ind|kans?|ky|"
            r"(?-i:L)a|(?-i:M)ass|md|mich|minn|(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|(?-i:P)a|penn|tenn|"
            r"(?-i:T)ex|va|vt|(?-i:W)ash|wisc?|wyo")
_ABBREV1 = (rf"(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri|{_ABSTATE}|"
            r"inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|jr|sr|bros|"
            r"(?:ed|ph)\.d|blvd|rd|esq|etc|al|seq|bldg)\.")
_ABBREV2 = (rf"(?:{_ABTITLE}|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph|[a-z](?:\.[a-z])*|invt|elec|natl|m[ft]g|"
            r"dept)\.")
_HYPHENS = r"-+"

# (pattern, group that is the token) in the lexer's rule order. As in JFlex, the longest
# match wins, the earlier rule on a tie, and a rule's trailing context counts towards its
# length but is left for the next token (group 1 is the token, group 0 what was matched).
_RULES = [(re.compile(p, re.IGNORECASE), g) for p, g in [
    (r"(can)not", 1), (r"(?=gonna|gotta|lemme|gimme|wanna)(...)..", 1),
    (rf"({_WORD}){_REDAUX}", 1), (r"([a-z]*[a-mo-z])n['`\u2019]t", 1), (_WORD, 0),
    (_REDAUX, 0), (r"n['`\u2019]t", 0),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", 0), (r"[-+]?(?:\d*(?:[.:,]\d+)+|\d+)", 0),
    (r"[a-z0-9]+(?:-[a-z]+){0,2}(?:\\?/[a-z0-9]+(?:-[a-z]+){0,2}){1,2}", 0), (r"[a-z]*\$|#", 0),
    (_ABBREV1, 0), (_ABBREV2, 0), (rf"({_WORD}\.)[,;:]", 1), (r'"', 0),
    (r"[<>]?[:;=][-o*']?[()dpo\\{@|\[\]](?![^\W_])", 0),
    (r"[{}\[\]()]", 0), (_HYPHENS, 0), (r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]", 0),
    (r"@+|#+|_+", 0), (r"\*+", 0), (r"[,;:\u3001]", 0), (r"[?!]+", 0), (r"[.\u00a1\u00bf]", 0), (r"[=/]", 0),
    (r"([a-z0-9][a-z0-9.,]*(?:-(?:[a-z0-9]+|[a-z](?:\.[a-z])+\.))+\.)[,;:]", 1),
    (r"[a-z0-9][a-z0-9.,]*(?:-(?:[a-z0-9]+|[a-z](?:\.[a-z])+\.))+", 0),
    (rf"((?:[dol]['`]{_A})?{_A}+(?:[-_](?:[dol]['`]{_A})?{_A}+)*\.)[,;:]", 1),
    (rf"(?:[dol]['`]{_A})?{_A}+(?:[-_](?:[dol]['`]{_A})?{_A}+)*", 0),
    (r"[a-z]+(?:[+&][a-z]+)+", 0),
    (r"'|''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u2039\u203a\u00ab\u00bb]{1,2}", 0),
    (r"<<|>>|[+%&~^|\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7<>]", 0),
]]
_ESCAPES = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-",
            '"': "''", "\u2026": "...", "\u0085": "...",
            # latexQuotes: curly and angle quotes become the ASCII quote tokens
            "\u201c": "``", "\u201d": "''", "\u2018": "`", "\u2019": "'", "\u201a": "'", "\u201b": "`",
            "\u00ab": "``", "\u00bb": "''", "\u2039": "`", "\u203a": "'"}
_SPACE = re.compile(r"\s+")
_APOSTROPHE_TOKEN = re.compile(rf"{_REDAUX}|n\u2019t", re.IGNORECASE)


def _ptb_tokens(text: str) -> list[str]:
    """Stanford PTBTokenizer's tokens of one line, before lower-casing (the rules captions use)."""
    out, i, n = [], 0, len(text)
    while i < n:
        space = _SPACE.match(text, i)
        if space:
            i = space.end()
            continue
        best, end = 0, i + 1  # a character no rule takes is deleted (untokenizable=firstDelete)
        token = ""
        for pattern, group in _RULES:
            m = pattern.match(text, i)
            if m and m.end() - i > best:
                best, token, end = m.end() - i, m.group(group), m.end(group)
        i = end
        if not token:
            continue
        if re.fullmatch(_HYPHENS, token) and 3 <= len(token) <= 4:
            token = "--"
        elif token.startswith("..") or re.fullmatch(r"(?:\.[ \u00a0]){2,4}\.", token):
            token = "..."
        elif len(token) > 1 and "\u2019" in token and _APOSTROPHE_TOKEN.fullmatch(token):
            token = token.replace("\u2019", "'")
        out.append(_ESCAPES.get(token, token))
    return out


def ptb_tokenize(text: str) -> list[str]:
    """A caption as coco-caption scores it: PTB tokens, lower-cased, its punctuation removed.

    >>> ptb_tokenize("A man's dog (brown) can't jump, \\"quickly\\"...")
    ['a', 'man', "'s", 'dog', '-lrb-', 'brown', '-rrb-', 'ca', "n't", 'jump', 'quickly']
    """
    return [t for t in (w.lower() for w in _ptb_tokens(text.replace("\n", " "))) if t not in PUNCTUATION]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco-caption computes it.

    Clipped n-gram counts pooled over the corpus; each candidate's effective reference
    length is the closest reference length (the shorter on a tie); the counts get
    coco-caption's smoothing ((matches + 1e-15) / (guesses + 1e-9)), so an order with no
    match gives a tiny positive score, not 0; brevity penalty on the pooled lengths.
    """
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        max_counts: Counter = Counter()
        for ref in refs:
            max_counts |= _ngrams(ref, n)
        test_len += len(cand)
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
        for gram, count in _ngrams(cand, n).items():
            correct[len(gram) - 1] += min(count, max_counts[gram])
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
    ratio = (test_len + tiny) / (ref_len + small)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1 / (k + 1)) * penalty)
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: Sequence[str], refs: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """ROUGE-L of one candidate: F-measure (beta 1.2) of the best LCS precision and best recall."""
    # coco-caption splits on " ", so an empty caption counts as one empty token.
    cand_len = max(1, len(candidate))
    lcs = [_lcs(r, candidate) for r in refs]
    prec = max(c / cand_len for c in lcs)
    rec = max(c / max(1, len(r)) for c, r in zip(lcs, refs))
    if prec == 0 or rec == 0:
        return 0.0
    return (1 + beta**2) * prec * rec / (rec + beta**2 * prec)


def cider_d(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], n: int = 4,
            sigma: float = 6.0) -> list[float]:
    """CIDEr-D per candidate (Vedantam et al., 2015) as coco-caption's Cider scorer computes it.

    TF-IDF vectors of 1..n-grams with document frequency from the reference sets of this
    corpus; the candidate's weights are clipped at the reference's; each order's cosine is
    damped by a Gaussian (sigma) of the difference in bigram counts; orders and references
    are averaged, x10.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    ref_counts = [[_ngrams(r, n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update(set().union(*(c.keys() for c in counts)))
    log_docs = math.log(float(len(references)))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(sum(v * v for v in order.values())) for order in vec], bigrams

    scores = []
    for cand, counts in zip(candidates, ref_counts):
        vec, norm, length = tfidf(_ngrams(cand, n))
        total = 0.0
        for ref_count in counts:
            rvec, rnorm, rlength = tfidf(ref_count)
            penalty = math.exp(-float(length - rlength) ** 2 / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(v, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] and rnorm[k]:
                    dot /= norm[k] * rnorm[k]
                total += dot * penalty
        scores.append(10.0 * total / n / len(counts))
    return scores


def caption_scores(candidates: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of generated captions, equal to coco-caption's.

    `candidates` maps an image id to its one generated caption, `references` the same ids
    to all of that image's reference captions, both as raw text (straight from the
    annotation file: no vocabulary, no truncation). Both are tokenized the way coco-caption
    does it (`ptb_tokenize`). CIDEr-D's document frequencies come from these references,
    so score a whole split at once, as coco-caption does.

    Returns {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}, each in [0, 1]
    except CIDEr-D (x10 scale, up to 10).
    """
    if set(candidates) != set(references):
        missing = sorted(map(str, set(candidates) ^ set(references)))[:3]
        raise ValueError(f"candidates and references must cover the same image ids (differ at {missing})")
    if not candidates:
        raise ValueError("no captions to score")
    keys = list(references)
    if any(not references[k] for k in keys):
        raise ValueError("every image needs at least one reference caption")
    cands = [ptb_tokenize(candidates[k]) for k in keys]
    refs = [[ptb_tokenize(r) for r in references[k]] for k in keys]
    scores = {f"bleu{k + 1}": s for k, s in enumerate(bleu(cands, refs))}
    scores["rouge_l"] = sum(rouge_l(c, r) for c, r in zip(cands, refs)) / len(keys)
    cider = cider_d(cands, refs)
    scores["cider_d"] = sum(cider) / len(cider)
    return scores


def confusion_matrix(preds: "torch.Tensor", target: "torch.Tensor", num_classes: int) -> "torch.Tensor":
    """C x C counts, rows the true class and columns the predicted one (scikit-learn's layout)."""
    flat = (target.long() * num_classes + preds.long()).flatten()
    return flat.bincount(minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(confusion: "torch.Tensor") -> float:
    """Share of correct predictions (0 for no samples)."""
    return float(confusion.diagonal().sum().double() / confusion.sum().clamp(min=1))


def macro_f1(confusion: "torch.Tensor") -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in the targets or the
    predictions (scikit-learn's `f1_score(average="macro")`: a class never seen nor predicted
    is left out, one predicted but never right counts 0)."""
    tp = confusion.diagonal().double()
    fp = confusion.sum(0).double() - tp
    fn = confusion.sum(1).double() - tp
    seen = (tp + fp + fn) > 0
    if not bool(seen.any()):
        return 0.0
    return float((2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])).mean())
