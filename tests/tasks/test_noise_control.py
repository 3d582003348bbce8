"""AdaTaiLr and the baselines: the TaiLr weight formula, the adaptive noise level and γ on synthetic scores with a
known tail, the methods' keep/drop decisions, and the corruptor."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.config import Denoise, Task
from tasks.denoise.adatailr import estimate, gamma_for
from tasks.denoise.corrupt import corrupt
from tasks.denoise.methods import METHODS, decide
from tasks.denoise.tailr import tailr_weights


def test_tailr_weights_match_hand_computed_values():
    probs = np.array([0.9, 0.5, 0.1, 0.01])
    # p / (γ + (1 − γ) p) with γ = 0.8: 0.9/0.98, 0.5/0.9, 0.1/0.82, 0.01/0.802; then clamped to [0.2, 1]
    expected = [0.9 / 0.98, 0.5 / 0.9, 0.2, 0.2]
    assert tailr_weights(np.log(probs), gamma=0.8, min_weight=0.2) == pytest.approx(expected)
    assert tailr_weights(np.log(probs), gamma=0.0, min_weight=0.0) == pytest.approx([1, 1, 1, 1])  # MLE
    assert tailr_weights(np.log(probs), gamma=1.0, min_weight=0.0) == pytest.approx(probs)  # weight = p
    torch_weights = tailr_weights(torch.log(torch.tensor(probs)), gamma=0.8, min_weight=0.2)
    assert torch_weights.numpy() == pytest.approx(expected)
    with pytest.raises(ValueError):
        tailr_weights(np.log(probs), gamma=1.5, min_weight=0.0)


def _scores(noise_rate: float, noise, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = round(noise_rate * n)
    scores = np.concatenate([rng.normal(2.0, 0.5, n - k), noise(rng, k)])
    return scores, np.r_[np.zeros(n - k, bool), np.ones(k, bool)]


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.4])
@pytest.mark.parametrize(
    "noise",
    [
        lambda rng, k: rng.normal(6.0, 0.5, k),  # far Gaussian
        lambda rng, k: rng.uniform(4.5, 9.0, k),  # flat
        lambda rng, k: 4.5 + rng.exponential(1.5, k),  # skewed
    ],
    ids=["far-gaussian", "uniform", "exponential"],
)
def test_noise_level_is_recovered_whatever_the_noise_shape(rate, noise):
    scores, noisy = _scores(rate, noise)
    fit = estimate(scores, level_z=1.0, tail_z=2.0)
    assert fit.noise_level == pytest.approx(rate, abs=0.04)
    assert fit.gamma == pytest.approx(gamma_for(fit.noise_level))
    dropped = scores >= fit.threshold
    assert dropped[noisy].mean() > 0.7 and noisy[dropped].mean() > 0.7  # most noise caught, mostly noise dropped


def test_clean_data_trains_as_mle_and_keeps_the_bulk():
    scores, _ = _scores(0.0, lambda rng, k: np.zeros(0))
    fit = estimate(scores, level_z=1.0, tail_z=2.0)
    assert fit.noise_level < 0.04 and fit.gamma < 0.042
    assert (scores >= fit.threshold).mean() < 0.05  # only far outliers of the bulk can go


def test_gamma_is_the_odds_of_the_noise_level():
    assert gamma_for(0.0) == 0.0 and gamma_for(0.2) == pytest.approx(0.25) and gamma_for(0.5) == 1.0


def _logprobs(rng, clean: int, noisy: int) -> list[np.ndarray]:
    good = [np.log(rng.uniform(0.3, 0.9, rng.integers(4, 12))) for _ in range(clean)]
    bad = [np.log(rng.uniform(0.001, 0.05, rng.integers(4, 12))) for _ in range(noisy)]
    return good + bad


@pytest.mark.parametrize("method", METHODS)
def test_every_method_records_a_decision_for_every_annotation(method):
    logprobs = _logprobs(np.random.default_rng(1), clean=40, noisy=10)
    decision = decide(method, logprobs, Denoise(method=method), seed=0)
    assert len(decision.noise_score) == len(decision.kept) == len(decision.reasons()) == 50
    assert all(bool(reason) == (not kept) for reason, kept in zip(decision.reasons(), decision.kept))
    if method in ("none", "tailr"):
        assert decision.kept.all()
    else:
        assert not decision.kept[40:].any() and decision.kept[:40].mean() > 0.9  # the noisy ten go, the rest stays
    assert decision.gamma == {"none": 0.0, "small_loss": 0.0, "gmm": 0.0, "tailr": 0.8}.get(method, decision.gamma)
    if method == "adatailr":
        assert decision.noise_level == pytest.approx(0.2, abs=0.05) and decision.gamma > 0


def test_the_corruptor_is_seeded_and_labels_what_it_did():
    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(50)],
            "reference": [f"A study of topic {n} with graph methods" for n in range(50)],
            "tags": [["nlp", "graphs"], ["vision"], ["kg", "rag", "llm"]] * 16 + [["x"], ["y"]],
        }
    )
    first, again = corrupt(items, 0.2, seed=3), corrupt(items, 0.2, seed=3)
    assert first.equals(again) and not first.equals(corrupt(items, 0.2, seed=4))
    changed = first["corruption"] != ""
    assert changed.sum() == 10
    assert (first.loc[changed, "annotation"] != items.loc[changed, "reference"]).all()
    assert (first.loc[~changed, "annotation"] == items.loc[~changed, "reference"]).all()
    truncated = first[first["corruption"] == "truncate"]
    for _, row in truncated.iterrows():
        assert items.set_index("item_id").loc[row["item_id"], "reference"].startswith(row["annotation"])


def test_hard_corruptions_stay_fluent_titles_and_are_wrong():
    titles = ["Graph neural networks for molecules", "BERT: pre-training of deep transformers", "Llama 2 explained"]
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "reference": titles, "tags": [["x"], ["y"], ["z"]]})
    neighbours = [titles[1], titles[2], titles[0]]
    swapped = corrupt(items, 1.0, seed=0, kinds=("neighbour",), neighbours=neighbours)
    assert list(swapped["annotation"]) == [titles[1], titles[2], titles[0]]
    detailed = corrupt(items, 1.0, seed=0, kinds=("detail",))
    for title, annotation in zip(titles, detailed["annotation"]):
        assert annotation != title and len(set(annotation.split()) & set(title.split())) >= 1  # one term replaced
    assert detailed.loc[2, "annotation"] != titles[2] and "2" not in detailed.loc[2, "annotation"].split()
    with pytest.raises(ValueError, match="nearest other item"):
        corrupt(items, 0.5, seed=0, kinds=("neighbour",))


def test_contrast_is_high_only_for_a_title_that_fits_one_of_its_items_neighbours_better():
    """A stand-in scorer (word overlap, not the model: the real one runs in the test below) gives each caption word
    log-prob 0 where the item's prompt holds it, −3 where not."""
    from types import SimpleNamespace

    from tasks.denoise.scores import contrast, nearest, token_logprobs

    class WordOverlapScorer:
        def score(self, prompts, captions, desc):
            texts = [" ".join(m["content"] for m in messages).lower() for messages in prompts]
            return [
                SimpleNamespace(token_logprobs=[0.0 if w in text else -3.0 for w in caption.lower().split()])
                for text, caption in zip(texts, captions)
            ]

    abstracts = [
        "graph neural networks predict properties of molecules",
        "graph neural networks predict the structure of proteins",
        "speech recognition with recurrent networks on audio",
        "dense passage retrieval for open-domain question answering",
    ]
    pool = [{"item_id": f"i{n}", "reference": a, "abstract": a} for n, a in enumerate(abstracts)]
    task = Task(max_field_chars=300)
    closest = nearest(pool, pool, task, 2)
    assert closest.shape == (4, 2) and all(row not in closest[row] for row in range(4))
    assert closest[0, 0] == 1 and closest[1, 0] == 0  # the two graph items are each other's nearest
    captions = ["graph networks molecules", "graph networks proteins"]  # the first item's title, then its neighbour's
    scorer, own_items = WordOverlapScorer(), [pool[0], pool[0]]
    own_fit = np.array([lp.mean() for lp in token_logprobs(captions, own_items, scorer, task, "own")])
    assert own_fit.tolist() == [0.0, -1.0]
    scores = contrast(captions, own_items, own_fit, pool, scorer, task)
    assert scores.tolist() == [-1.0, 1.0]  # its own title fits no neighbour as well; the neighbour's fits it fully
    assert contrast(captions, own_items, own_fit, pool[:1], scorer, task).tolist() == [0, 0]  # no other item


def test_the_trusted_fit_catches_every_kind_of_wrong_and_estimates_the_noise_level_by_adjusted_count():
    from sklearn.metrics import roc_auc_score

    from tasks.denoise.scores import WITH_DETAIL, fit_trusted

    rng = np.random.default_rng(0)
    columns = ["nll", "pmi", "content", "contrast", "end", "peak_nll", "peak_pmi"]
    # a wrong item sits higher on pmi, content and contrast, an unfinished caption on end, a wrong detail on the
    # peaks; each overlaps the right ones
    shifts = {
        "right": [0.0] * 7,
        "wrong_item": [0.0, 1.2, 1.2, 0.8, 0.0, 0.0, 0.0],
        "unfinished": [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
        "wrong_detail": [0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 1.5],
    }

    def pairs(counts: dict[str, int]) -> pd.DataFrame:
        shift = np.concatenate([np.tile(shifts[kind], (count, 1)) for kind, count in counts.items()])
        return pd.DataFrame(rng.normal(0.0, 1.0, shift.shape) + shift, columns=columns)

    kind = np.repeat(list(shifts), 600)  # enough for ε̂ within 0.06
    fit = fit_trusted(pairs(dict.fromkeys(shifts, 600)), kind, seed=0, detectors=WITH_DETAIL)
    assert set(fit.detectors) == {"wrong_item", "unfinished", "wrong_detail"}
    assert 0.6 < fit.tpr < 0.95 and 0.05 < fit.fpr < 0.4  # imperfect on purpose
    for rate in (0.0, 0.1, 0.2, 0.4):
        wrong = round(rate * 1000)
        counts = {"right": 1000 - wrong, "wrong_item": wrong // 3, "unfinished": wrong // 3}
        counts["wrong_detail"] = wrong - 2 * (wrong // 3)
        assert abs(fit.noise_level(pairs(counts)) - rate) < 0.06
    scores = fit.score(pairs(dict.fromkeys(shifts, 100)))
    is_wrong = np.r_[np.zeros(100), np.ones(100)]
    for start in (100, 200, 300):  # the wrong items (they end like right captions), the unfinished, the details
        assert roc_auc_score(is_wrong, np.r_[scores[:100], scores[start : start + 100]]) > 0.75
    trusted = pairs(dict.fromkeys(shifts, 600))
    default = fit_trusted(trusted, kind, seed=0)  # two detectors; the wrong-detail pairs are left out of its rates
    alone = fit_trusted(trusted[kind != "wrong_detail"].reset_index(drop=True), kind[kind != "wrong_detail"], seed=0)
    assert set(default.detectors) == {"wrong_item", "unfinished"}
    assert (default.tpr, default.fpr, default.threshold) == (alone.tpr, alone.fpr, alone.threshold)


def test_a_wrong_detail_swaps_one_term_for_one_of_a_related_title():
    from tasks.denoise.corrupt import swap_word

    rng = np.random.default_rng(0)
    title, donor = "Dense passage retrieval for open-domain question answering", "Sparse retrieval with SPLADE v2"
    for _ in range(20):
        swapped = swap_word(title, donor, rng)
        removed, added = set(title.split()) - set(swapped.split()), set(swapped.split()) - set(title.split())
        assert len(removed) == 1 and len(added) == 1 and added <= {"Sparse", "SPLADE", "v2"}
    assert swap_word("Attention", "Attention", rng) is None  # nothing to swap in


def test_a_measured_noise_level_drops_that_share_of_the_highest_scores():
    scores = np.arange(10, dtype=float)
    decision = decide("adatailr", [np.zeros(3)] * 10, Denoise(), 0, score=scores, noise_level=0.3)
    assert list(decision.kept) == [True] * 7 + [False] * 3
    assert decision.gamma == pytest.approx(0.3 / 0.7) and decision.noise_level == 0.3
    assert decide("adatailr", [np.zeros(3)] * 10, Denoise(), 0, score=scores, noise_level=0.0).kept.all()


def test_best_of_n_sends_each_items_best_candidate_to_the_method_and_records_the_rest():
    from tasks.denoise.methods import best_per_item, with_outranked

    items = ["a", "a", "a", "b", "b", "c"]
    scores = np.array([2.0, 1.0, 1.5, 0.5, 3.0, 9.0])
    best = best_per_item(items, scores)
    assert list(best) == [False, True, False, True, False, True]
    # the method sees three candidates and drops the noisiest of them (item c), not a runner-up of a or b
    decision = decide("small_loss", [np.zeros(2)] * 3, Denoise(drop_quantile=0.34), 0, scores[best])
    widened = with_outranked(decision, best, scores, items)
    assert list(widened.kept) == [False, True, False, True, False, False]
    assert list(widened.lost) == [True, False, True, False, True, False]
    reasons = widened.reasons()
    assert reasons[0] == "best of n: another candidate of this item beat it by 1.000"
    assert reasons[5].startswith("small_loss: noise score 9.000") and reasons[1] == ""
    assert list(widened.noise_score) == list(scores)


def test_consensus_picks_the_candidate_the_others_agree_with_even_against_a_lower_nll():
    from tasks.denoise.methods import best_per_item, consensus

    items = ["a"] * 4 + ["b"] * 2
    captions = [
        "graph neural networks for molecules",  # the one its siblings share words with
        "graph networks for molecules",
        "neural networks for molecule graphs",
        "a recipe for banana bread",  # the sampler's favourite (lowest NLL), agreeing with nothing
        "dense retrieval",
        "dense passage retrieval",
    ]
    nll = np.array([1.0, 1.2, 1.1, 0.2, 0.5, 0.6])
    content = np.array([0.3, 0.4, 0.35, 0.9, 0.2, 0.2])
    selection = consensus(items, captions, nll, content)
    assert list(best_per_item(items, selection)) == [True, False, False, False, True, False]
    assert list(best_per_item(items, nll))[:4] == [False, False, False, True]  # what NLL alone would have kept
    assert selection[3] == selection[:4].max()  # the fluent outlier ranks last among its item's candidates
    alone = consensus(["c"], ["one candidate"], np.array([0.5]), np.array([0.5]))
    assert alone.shape == (1,) and np.isfinite(alone).all()


def test_each_turn_reports_what_every_best_of_n_pick_would_have_sent_on():
    from tasks.denoise.denoise import selection_quality

    items = pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "reference": ["dense passage retrieval", "graph neural networks"],
            "abstract": ["Dense passage retrieval for open-domain QA.", "Graph neural networks on molecules."],
        }
    )
    annotations = pd.DataFrame(
        {
            "item_id": ["a", "a", "a", "b", "b", "b"],
            "caption": [
                "dense retrieval",
                "dense passage retrieval",
                "banana bread",
                "graph networks",
                "neural graphs",
                "graph neural networks",
            ],
            "mean_logprob": [-0.5, -1.0, -0.1, -0.2, -0.3, -0.9],  # NLL prefers the banana and "graph networks"
        }
    )
    quality = selection_quality(annotations, items, Task())
    from tasks.metrics import rouge_l

    assert quality["quality_pick_nll_rouge_l"] == pytest.approx(
        (rouge_l("banana bread", "dense passage retrieval") + rouge_l("graph networks", "graph neural networks")) / 2
    )
    assert quality["quality_pick_consensus_rouge_l"] > quality["quality_pick_nll_rouge_l"]
    every = [
        rouge_l(c, t)
        for c, t in zip(annotations["caption"], ["dense passage retrieval"] * 3 + ["graph neural networks"] * 3)
    ]
    assert quality["quality_pick_random_rouge_l"] == pytest.approx(np.mean(every))
    assert selection_quality(annotations.drop_duplicates("item_id"), items, Task()) == {}  # one candidate: no pick


def test_every_noise_score_runs_on_the_real_model_and_the_fitted_one_reports_its_fit(backend, tmp_path):
    from stores.llm_cache import LLMCallCache
    from stores.registry import ModelRef
    from stores.store import Store
    from tasks.denoise import noise_decision
    from tasks.llm.cached import CachedLLM

    topics = ["graph neural networks", "dense retrieval", "knowledge graphs", "speech recognition", "protein folding"]
    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(10)],
            "reference": [f"A survey of {topics[n % 5]} ({n})" for n in range(10)],
            "abstract": [f"We review {topics[n % 5]}: methods, benchmarks and open problems." for n in range(10)],
        }
    )
    trusted, scored = items.iloc[:5], items.iloc[5:]
    captions = list(scored["reference"][:-1]) + [items["reference"][0]]  # the last one belongs to another item
    annotations = pd.DataFrame({"item_id": scored["item_id"].values, "candidate": 0, "caption": captions})
    model = ModelRef("flywheel-policy", 1, "fingerprint-for-test", tmp_path)
    with Store.open(tmp_path / "s.duckdb") as store:
        llm = CachedLLM(lambda ref: backend, LLMCallCache(store.con), model, progress=False)
        for score in ("nll", "pmi", "content", "contrast", "fitted"):
            cfg = Denoise(score=score)
            decision, fit = noise_decision(cfg, annotations, items, trusted, llm, Task(max_field_chars=300), seed=0)
            assert len(decision.noise_score) == 5 and np.isfinite(decision.noise_score).all()
            assert set(fit) == ({"trusted_tpr", "trusted_fpr"} if score == "fitted" else set())
        with pytest.raises(Exception, match="at least 4 human-split items"):
            noise_decision(Denoise(score="fitted"), annotations, items, trusted.iloc[:2], llm, Task(), seed=0)


def test_the_trusted_pairs_come_from_human_titles_the_turns_scorer_has_not_trained_on():
    from types import SimpleNamespace

    from tasks.config import Settings
    from tasks.denoise.denoise import trusted_window
    from tasks.stage import turn_window

    human = pd.DataFrame({"item_id": [f"h{n}" for n in range(10)], "reference": [f"title {n}" for n in range(10)]})
    settings = Settings.model_validate({"refine": {"items_per_turn": 3}})
    for turn in (1, 2, 4):
        ctx = SimpleNamespace(items=lambda split: human, settings=settings, upstream={"refine": 1}, turn=turn)
        trusted = trusted_window(ctx, 3)
        refined_on = set(human["item_id"].iloc[turn_window(len(human), turn, 3)])  # the refine stage's window
        assert len(trusted) == 3 and not refined_on & set(trusted["item_id"])
        assert set(trusted["item_id"]) == set(human["item_id"].iloc[turn_window(len(human), turn + 1, 3)])


def test_each_distinct_text_is_embedded_once_and_every_copy_gets_its_vector(monkeypatch):
    from tasks.llm import embeddings

    model, encoded = embeddings._model(), []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: encoded.append(list(texts)) or real_encode(texts, **kw))
    texts = ["graph neural networks", "a survey of retrieval", "graph neural networks", "graph neural networks"]
    vectors = embeddings.embed(texts)
    assert encoded == [["graph neural networks", "a survey of retrieval"]]
    assert vectors.shape == (4, 384) and (vectors[0] == vectors[2]).all() and (vectors[0] == vectors[3]).all()
    assert np.allclose(vectors[1], embeddings.embed(["a survey of retrieval"])[0], atol=1e-5)
