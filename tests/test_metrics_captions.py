"""caption_scores equals coco-caption (pycocoevalcap's Bleu, Rouge and Cider scorers) to 1e-6
on COCO-format caption sets, and its tokenizer follows the PTBTokenizer rules captions hit."""

from __future__ import annotations

import random

import pytest

from mmtrain.metrics import caption_scores, ptb_tokenize

pycocoevalcap = pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

# Raw captions in the annotation file's style: capitals, trailing periods, commas, possessives.
REFERENCES = {
    139: ["A woman stands in the dining area at the table.", "A room with chairs, a table, and a woman in it.",
          "A woman standing in a kitchen by a window", "A person standing at a table in a room.",
          "A living room with hard wood floors and a table."],
    285: ["A big burly grizzly bear is show with grass in the background.", "The large brown bear has a black nose.",
          "Closeup of a brown bear sitting in a grassy area.", "A large bear that is sitting on grass. ",
          "A close up picture of a brown bear's face."],
    632: ["Bedroom scene with a bookcase, blue comforter and window.", "A bedroom with a bookshelf full of books.",
          "This room has a bed with blue sheets and a large bookcase", "A bed and a mirror in a small room.",
          "a bed room with a neatly made bed a window and a book shelf"],
    724: ["A stop sign is mounted upside-down on it's post. ", "A stop sign that is hanging upside down.",
          "An upside down stop sign by the road.", "a stop sign put upside down on a metal pole ",
          "A stop sign installed upside down on a street post."],
    776: ["Three teddy bears, each a different color, snuggling together.", "Three stuffed animals are sitting on a bed.",
          "three teddy bears giving each other a hug", "A group of three stuffed animal teddy bears.",
          "Three stuffed bears hugging and sitting on a blue pillow"],
    785: ["A woman posing for the camera, holding a pair of skis.", "A woman in a red jacket skiing down a slope",
          "A young woman is skiing down the mountain slope. ", "a person on skis makes her way through the snow",
          "A woman wearing a red jacket and holding ski poles (on skis)."],
    802: ["A kitchen with a refrigerator, stove and oven with cabinets.", "A white oven and a white refrigerator are "
          "in the kitchen.", "The refrigerator is brand new and was delivered today.",
          "a kitchen with a stove, refrigerator and microwave", "A kitchen that has a stove, fridge, and cabinets."],
    872: ["A baseball player swinging a bat at a ball", "A man in a red shirt holding a baseball bat.",
          "A batter can't wait to hit the ball -- he's ready!", "the batter is about to hit the ball",
          "A baseball player swings his bat during a game."],
}


def reference_scores(candidates: dict, references: dict) -> dict[str, float]:
    """pycocoevalcap on the same tokenization (what its PTBTokenizer would hand its scorers)."""
    gts = {k: [" ".join(ptb_tokenize(r)) for r in refs] for k, refs in references.items()}
    res = {k: [" ".join(ptb_tokenize(candidates[k]))] for k in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3],
            "rouge_l": float(rouge), "cider_d": float(cider)}


def assert_equal_to_coco_caption(candidates: dict, references: dict = REFERENCES) -> dict[str, float]:
    ours = caption_scores(candidates, references)
    theirs = reference_scores(candidates, references)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6, rel=0), name
    return ours


def drop_words(text: str, rng: random.Random, p: float) -> str:
    return " ".join(w for w in text.split() if rng.random() > p) or text.split()[0]


def test_exact_copies_of_a_reference_score_as_coco_caption_does():
    scores = assert_equal_to_coco_caption({k: refs[2] for k, refs in REFERENCES.items()})
    assert scores["bleu4"] > 0.5 and scores["cider_d"] > 2


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_word_dropout_scores_as_coco_caption_does(p):
    rng = random.Random(int(p * 10))
    assert_equal_to_coco_caption({k: drop_words(refs[0], rng, p) for k, refs in REFERENCES.items()})


def test_shuffled_words_score_as_coco_caption_does():
    rng = random.Random(0)
    cands = {}
    for k, refs in REFERENCES.items():
        words = refs[1].split()
        rng.shuffle(words)
        cands[k] = " ".join(words)
    assert_equal_to_coco_caption(cands)


@pytest.mark.parametrize("keep", [1, 2, 4])
def test_truncated_captions_score_as_coco_caption_does(keep):
    # Short candidates: the brevity penalty and the smoothing of orders with no n-gram at all.
    assert_equal_to_coco_caption({k: " ".join(refs[3].split()[:keep]) for k, refs in REFERENCES.items()})


def test_captions_of_the_wrong_images_score_as_coco_caption_does():
    keys = list(REFERENCES)
    scores = assert_equal_to_coco_caption({k: REFERENCES[keys[(i + 1) % len(keys)]][0] for i, k in enumerate(keys)})
    assert scores["cider_d"] < 0.5


def test_ties_in_reference_length_take_the_shorter_reference_like_coco_caption():
    # The example: 5 words, references of 6 and 4 -> effective length 4, no brevity
    # penalty: 1.0 (torchmetrics took the first reference listed and gave 0.8187).
    refs = {1: ["a b c d e f", "a b c d"], 2: ["one two three four five six", "one two three four"]}
    scores = assert_equal_to_coco_caption({1: "a b c d e", 2: "one two three four five"}, refs)
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6)


def test_no_matching_four_gram_gives_coco_captions_tiny_positive_bleu4():
    refs = {1: ["a man rides a horse"], 2: ["two dogs in the snow"]}
    scores = assert_equal_to_coco_caption({1: "a horse a man rides", 2: "dogs two"}, refs)
    assert 0 < scores["bleu4"] < 1e-3


def test_empty_and_punctuation_only_candidates_score_as_coco_caption_does():
    cands = {k: refs[0] for k, refs in REFERENCES.items()}
    cands[139], cands[285] = "", " . , "
    assert_equal_to_coco_caption(cands)


@pytest.mark.parametrize("text, tokens", [
    ("A man's dog can't jump, \"quickly\".", ["a", "man", "'s", "dog", "ca", "n't", "jump", "quickly"]),
    ("I cannot go -- gonna wait...", ["i", "can", "not", "go", "gon", "na", "wait"]),
    ("A black-and-white photo of a t-shirt.", ["a", "black-and-white", "photo", "of", "a", "t-shirt"]),
    ("10,000 people at 12:30 on 5th street", ["10,000", "people", "at", "12:30", "on", "5th", "street"]),
    ("The U.S. flag; Mr. Smith's hat at St. Louis", ["the", "u.s.", "flag", "mr.", "smith", "'s", "hat", "at",
                                                     "st.", "louis"]),
    ("Two dogs' toys: a ball - and a rope!", ["two", "dogs", "toys", "a", "ball", "and", "a", "rope"]),
    # coco-caption compares its punctuation list with lower-cased output: "-LRB-" no longer matches.
    ("A sign (red) on a pole {old}", ["a", "sign", "-lrb-", "red", "-rrb-", "on", "a", "pole", "-lcb-", "old",
                                      "-rcb-"]),
    ("What?! a cat!! and/or $5 for 50% AT&T", ["what", "?!", "a", "cat", "!!", "and/or", "$", "5", "for", "50",
                                               "%", "at&t"]),
    ("table.The man\nsits", ["table.the", "man", "sits"]),
    ("\u201cQuoted\u201d text \u2026 ok", ["quoted", "text", "ok"]),
])
def test_tokenizer_follows_the_ptb_rules_coco_caption_uses(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_caption_scores_refuses_mismatched_image_ids():
    with pytest.raises(ValueError, match="same image ids"):
        caption_scores({1: "a cat"}, {2: ["a cat"]})
