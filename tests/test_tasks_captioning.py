"""Captioning: CIDEr-D against hand-computed and coco-caption values, beam search against
greedy on a distribution where they differ, teacher forcing that lines up, COCO-style
grouping, and scoring against the raw references (tests/test_metrics_captions.py checks
every figure against pycocoevalcap itself)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmtrain.metrics import caption_scores, cider_d
from mmtrain.tasks.captioning import IGNORE, beam_search
from tests.zoo import build, compose_config, fixed_batch, overfit


def words(*texts: str) -> list[list[str]]:
    return [t.split() for t in texts]


def test_cider_d_of_exact_matches_is_five_per_item():
    # By hand: every n-gram has df 1 in a 2-image corpus, so idf = log 2 for all; unigram and
    # bigram cosines are 1, there are no 3- or 4-grams: mean over orders 0.5, x10 = 5.
    assert cider_d(words("a b", "c d"), [words("a b"), words("c d")]) == pytest.approx([5.0, 5.0])


def test_cider_d_clips_repeated_words_and_penalises_length_as_computed_by_hand():
    # Candidate "a a b" vs reference "a b" (idf log 2 =: L everywhere):
    # unigrams (2L, L) . clipped min(2L, L) L + L L = 2L^2 over |(2L, L)| |(L, L)| = 2/sqrt(10);
    # bigrams {aa, ab} vs {ab}: L^2 / (sqrt(2) L . L) = 1/sqrt(2); no shared 3-grams.
    # Length 3 vs 2: Gaussian penalty exp(-1 / (2 . 6^2)).
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    per_item = cider_d(words("a a b", "c d"), [words("a b"), words("c d")])
    assert per_item[0] == pytest.approx(expected, rel=1e-12)


def test_cider_d_matches_coco_caption_reference_values():
    # Reference values from coco-caption's CiderD (pycocoevalcap 1.2, cider/cider_scorer.py) on
    # this corpus.
    refs = [words("a man riding a horse on a beach", "a person rides a horse near the ocean"),
            words("two dogs play in the snow", "a pair of dogs playing in snow"),
            words("a plate of food with broccoli", "broccoli and rice on a white plate",
                  "a white plate with food")]
    cands = words("a man riding a horse", "two dogs playing in the snow", "a plate with broccoli and rice")
    per_item = cider_d(cands, refs)
    assert per_item == pytest.approx([3.797302764775909, 3.75497600753239, 2.5911860371840083], rel=1e-9)


BOS, EOS, X, Y = 2, 3, 4, 5


def toy_step(prefix: torch.Tensor) -> torch.Tensor:
    """P(x)=.6, P(y)=.4 first; after x: P(eos)=.4 (x y .3 each); after y: P(eos)=.9.
    Greedy takes x then eos (p=.24); the best sequence is y eos (p=.36)."""
    rows = []
    for row in prefix.tolist():
        p = torch.full((6,), 1e-9)
        last = row[-1]
        if last == BOS:
            p[X], p[Y] = 0.6, 0.4
        elif last == X:
            p[EOS], p[X], p[Y] = 0.4, 0.3, 0.3
        elif last == Y:
            p[EOS], p[X], p[Y] = 0.9, 0.05, 0.05
        else:
            p[EOS] = 1.0
        rows.append(p.log())
    return torch.stack(rows)


def test_beam_search_finds_the_likelier_caption_that_greedy_misses():
    assert beam_search(toy_step, 2, BOS, EOS, max_length=5, beam_size=1) == [[X], [X]]
    assert beam_search(toy_step, 2, BOS, EOS, max_length=5, beam_size=2) == [[Y], [Y]]


def test_decoding_stops_at_max_length_without_eos():
    always_x = lambda prefix: torch.log(torch.tensor([1e-9, 1e-9, 1e-9, 1e-9, 1.0, 1e-9])).expand(
        prefix.shape[0], -1)
    assert beam_search(always_x, 1, BOS, EOS, max_length=4, beam_size=3) == [[X] * 4]


def test_teacher_forcing_shifts_the_caption_and_ends_it_with_eos():
    model, task, data = build(compose_config(task="captioning"))
    ids = torch.tensor([[7, 8, 9], [7, 0, 0]])
    inputs, target = task._teacher_forcing(ids, torch.tensor([3, 1]))
    assert inputs.tolist() == [[task.bos_id, 7, 8, 9], [task.bos_id, 7, 0, 0]]
    assert target.tolist() == [[7, 8, 9, task.eos_id], [7, task.eos_id, IGNORE, IGNORE]]


def test_an_eos_that_is_also_the_pad_token_is_still_learned():
    # CLIP's and GPT's tokenizers pad with their end token: ignoring pads must not ignore ends.
    model, task, data = build(compose_config(task="captioning"))
    task.pad_id = task.eos_id
    eos = task.eos_id
    inputs, target = task._teacher_forcing(torch.tensor([[7, 8, eos], [7, eos, eos]]), torch.tensor([2, 1]))
    assert target.tolist() == [[7, 8, eos, IGNORE], [7, eos, IGNORE, IGNORE]]


def test_a_pretrained_tokenizers_own_cls_and_sep_frame_each_caption_once():
    # BERT's tokenizer writes [CLS] caption [SEP] itself: adding bos/eos again taught the
    # decoder to say [CLS] first and scored a second [SEP] after the caption's end.
    model, task, data = build(compose_config(text="hf", task="captioning"))
    assert task.wrapped and not build(compose_config(task="captioning"))[1].wrapped
    batch = fixed_batch(data, 8)
    inputs, target = task._teacher_forcing(batch["text"], batch["text_lengths"])
    for row_in, row_target, n in zip(inputs.tolist(), target.tolist(), batch["text_lengths"].tolist()):
        scored = [t for t in row_target if t != IGNORE]
        assert row_in[0] == task.bos_id and row_in[1] != task.bos_id
        assert len(scored) == n - 1 and scored[-1] == task.eos_id and task.eos_id not in scored[:-1]
        assert task.bos_id not in scored
    for evaluation in _memorised(model, task, batch):
        assert evaluation.metrics["bleu4"] == pytest.approx(1.0), evaluation.artifacts[0].rows[:2]


def _memorised(model, task, batch) -> list:
    """Overfit `batch`'s captions, then evaluate it greedy and with 3 beams."""
    overfit(model, task, batch, steps=400, target=0.01)
    model.eval()
    evaluations = []
    for beam in (1, 3):
        task.beam_size = beam
        evaluations.append(task.evaluate(model, [batch]))
    return evaluations


def test_a_decoder_that_memorised_its_captions_scores_bleu_one_greedy_and_with_beams():
    model, task, data = build(compose_config(task="captioning"))
    for evaluation in _memorised(model, task, fixed_batch(data, 8)):
        assert evaluation.metrics["bleu4"] == pytest.approx(1.0), evaluation.artifacts[0].rows[:2]
        assert evaluation.metrics["cider_d"] > 5.0


def test_several_captions_per_image_are_decoded_once_and_scored_together(tmp_path, monkeypatch):
    model, task, data = build(compose_config(task="captioning"))
    batch = fixed_batch(data, 8)
    batch["image"] = batch["image"][[0, 0, 2, 2, 4, 4, 6, 6]]     # 4 images, 2 captions each
    batch["image_id"] = torch.tensor([10, 10, 11, 11, 12, 12, 13, 13])
    decoded = []
    generate = task.generate
    monkeypatch.setattr(task, "generate", lambda m, images: decoded.append(len(images)) or generate(m, images))
    model.eval()
    evaluation = task.evaluate(model, [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}])
    (examples,) = evaluation.artifacts
    assert sum(decoded) == 4
    assert [len(e["references"]) for e in examples.rows] == [2, 2, 2, 2]
    assert set(evaluation.metrics) == {"loss", "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}
    (path,) = evaluation.write_artifacts(tmp_path)
    assert '"references"' in path.read_text()


def test_captions_are_scored_against_the_raw_references_not_the_vocabularys_view(tmp_path):
    model, task, data = build(compose_config(task="captioning"))
    batch = fixed_batch(data, 4)
    batch["image_id"] = torch.tensor([20, 20, 21, 21])
    # Words the vocabulary never saw, capitals and punctuation: the decoded view would lose them.
    task.references = {20: ["A zebra-striped Kettle, brand new.", "the kettle's lid"],
                       21: ["An OUT-of-vocabulary caption!"]}
    model.eval()
    evaluation = task.evaluate(model, [batch])
    (examples,) = evaluation.artifacts
    generated = {e["image"]: e["generated"] for e in examples.rows}
    assert [e["references"] for e in examples.rows] == [task.references[20], task.references[21]]
    expected = caption_scores(generated, task.references)
    assert {k: evaluation.metrics[k] for k in expected} == expected
    (path,) = evaluation.write_artifacts(tmp_path)
    assert json.loads(path.read_text())[0]["references"] == task.references[20]
