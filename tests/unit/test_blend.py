"""Blending text, co-occurrence and popularity: weights, config files, normalisation, top-k."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recstream.encoders.profile import DecayedProfileModel
from recstream.scoring.blend import (
    EQUAL_WEIGHTS,
    BlendConfigError,
    BlendWeights,
    blend_score_topk,
    blend_scores,
    blend_topk,
    candidate_mask,
    exclusion_set,
    normalize_scores,
    popularity_vector,
    text_scores,
)
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def mask(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# --------------------------------------------------------------------------- weights and files


def test_weights_validation() -> None:
    assert BlendWeights().as_tuple() == (1.0, 1.0, 1.0)
    assert BlendWeights(2, 1, 1).normalized().as_tuple() == pytest.approx((0.5, 0.25, 0.25))
    for bad in ({"text": -1.0}, {"cooccurrence": math.nan}, {"popularity": math.inf}, {"text": True}, {"text": "1"}):
        with pytest.raises(ValueError, match="weight"):
            BlendWeights(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one weight"):
        BlendWeights(0, 0, 0)
    with pytest.raises(ValueError, match="normalization"):
        BlendWeights(normalization="softmax")


def test_weights_file_round_trip(tmp_path) -> None:
    w = BlendWeights(0.6, 0.3, 0.1, "rank")
    path = w.save(tmp_path / "conf" / "blend.json", meta={"window": [1, 2]})
    doc = json.loads(path.read_text())
    assert doc["format"] == "recstream-blend-weights" and doc["version"] == 1
    assert doc["weights"] == {"text": 0.6, "cooccurrence": 0.3, "popularity": 0.1}
    assert doc["meta"] == {"window": [1, 2]}
    assert BlendWeights.load(path) == w
    assert [p.name for p in path.parent.iterdir()] == ["blend.json"]  # no temporary file left


def test_weights_file_errors(tmp_path) -> None:
    path = tmp_path / "w.json"
    with pytest.raises(BlendConfigError, match="cannot read"):
        BlendWeights.load(path)
    path.write_text("{nope")
    with pytest.raises(BlendConfigError, match="not JSON"):
        BlendWeights.load(path)
    path.write_text(json.dumps({"weights": {"text": 1}}))
    with pytest.raises(BlendConfigError, match="not a blend weights file"):
        BlendWeights.load(path)
    doc = {"format": "recstream-blend-weights", "version": 2, "weights": {"text": 1}}
    path.write_text(json.dumps(doc))
    with pytest.raises(BlendConfigError, match="unknown blend weights version 2"):
        BlendWeights.load(path)
    doc["version"] = 1
    doc["weights"] = {"text": 1, "colour": 2}
    path.write_text(json.dumps(doc))
    with pytest.raises(BlendConfigError, match="unknown signal"):
        BlendWeights.load(path)
    doc["weights"] = {"text": -1}
    path.write_text(json.dumps(doc))
    with pytest.raises(BlendConfigError, match="finite and >= 0"):
        BlendWeights.load(path)
    doc["weights"] = {"popularity": 2}  # missing weights are 0
    path.write_text(json.dumps(doc))
    assert BlendWeights.load(path) == BlendWeights(0, 0, 2)


# --------------------------------------------------------------------------- normalisation


def test_zscore_over_the_candidates_only() -> None:
    # candidates 1, 2, 3: mean 2, std sqrt(2/3); the non-candidate 100 is ignored and gets 0
    z = normalize_scores(t([[1, 2, 3, 100]]), mask([[1, 1, 1, 0]]), "zscore")
    s = math.sqrt(1.5)
    assert z.tolist()[0] == pytest.approx([-s, 0.0, s, 0.0])


def test_a_constant_signal_has_no_influence() -> None:
    z = normalize_scores(t([[0, 0, 0, 5], [0.7, 0.7, 0.7, 0.7]]), mask([[1, 1, 1, 0], [1, 1, 1, 1]]), "zscore")
    assert z.abs().max() == 0.0
    r = normalize_scores(t([[0, 0, 0]]), mask([[1, 1, 1]]), "rank")
    assert r.tolist()[0] == pytest.approx([0.5, 0.5, 0.5])  # equal for every candidate


def test_rank_normalisation_gives_mid_ranks() -> None:
    r = normalize_scores(t([[3, 1, 2, -7], [1, 1, 2, 9]]), mask([[1, 1, 1, 0], [1, 1, 1, 0]]), "rank")
    assert r.tolist()[0] == pytest.approx([1.0, 0.0, 0.5, 0.0])
    assert r.tolist()[1] == pytest.approx([0.25, 0.25, 1.0, 0.0])  # ties share their mid-rank


def test_normalisation_rejects_non_finite_candidates() -> None:
    with pytest.raises(ValueError, match="finite"):
        normalize_scores(t([[1, math.nan]]), mask([[1, 1]]))
    # a non-finite score outside the candidates is fine
    assert normalize_scores(t([[1, -math.inf, 2]]), mask([[1, 0, 1]])).isfinite().all()


@pytest.mark.parametrize("norm", ["zscore", "rank"])
def test_blend_is_scale_free(norm: str) -> None:
    rng = np.random.default_rng(0)
    text, co, pop = (rng.random((4, 30)).astype(np.float32) for _ in range(3))
    cand = torch.from_numpy(rng.random((4, 30)) > 0.2)
    w = BlendWeights(0.5, 0.3, 0.2, norm)
    a = blend_scores(cand, w, text, co, pop)
    b = blend_scores(cand, w, 1000 * text + 3, 0.01 * co, pop * 7 - 2)
    assert torch.equal(a.isinf(), ~cand)
    assert torch.allclose(a[cand], b[cand], atol=1e-4)
    c = blend_scores(cand, BlendWeights(5.0, 3.0, 2.0, norm), text, co, pop)  # only the ratios matter
    assert torch.allclose(c[cand], 10 * a[cand], atol=1e-4)


def test_blend_weights_combine_the_normalised_signals() -> None:
    text = t([[0.9, 0.1, 0.5]])
    co = t([[0.0, 3.0, 0.0]])
    cand = mask([[1, 1, 1]])
    _, rows = blend_topk(cand, BlendWeights(1, 0, 0), 3, text, co)
    assert rows.tolist() == [[0, 2, 1]]  # text alone
    _, rows = blend_topk(cand, BlendWeights(0, 1, 0), 1, text, co)
    assert rows.tolist() == [[1]]  # co-occurrence alone
    # z(text) = [1.22, -1.22, 0], z(co) = [-0.71, 1.41, -0.71]: equal weights -> 0, 1, 2
    vals, rows = blend_topk(cand, BlendWeights(1, 1, 0), 3, text, co)
    assert rows.tolist() == [[0, 1, 2]]
    assert vals.tolist()[0] == pytest.approx([1.2247 - 0.7071, -1.2247 + 1.4142, -0.7071], abs=1e-3)


def test_popularity_may_be_one_vector_for_all_users() -> None:
    cand = mask([[1, 1, 0], [0, 1, 1]])
    pop = t([1.0, 5.0, 3.0])
    _, rows = blend_topk(cand, BlendWeights(0, 0, 1), 2, popularity=pop)
    assert rows.tolist() == [[1, 0], [1, 2]]


def test_blend_topk_excludes_and_marks_short_lists() -> None:
    cand = mask([[1, 0, 1, 0], [0, 0, 0, 1]])
    vals, rows = blend_topk(cand, EQUAL_WEIGHTS, 3, t([[0.1, 0.9, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]]))
    assert rows[0, :2].tolist() == [2, 0]
    assert vals[0, 2] == -math.inf  # only two candidates
    assert rows[1, 0] == 3 and vals[1, 1:].isinf().all()
    assert blend_topk(cand, EQUAL_WEIGHTS, 9, t([[0.0] * 4] * 2))[1].shape == (2, 4)
    with pytest.raises(ValueError, match="k must be"):
        blend_topk(cand, EQUAL_WEIGHTS, -1)


def test_batched_blend_equals_one_user_at_a_time() -> None:
    rng = np.random.default_rng(1)
    text, co, pop = rng.random((5, 40)), rng.random((5, 40)) * (rng.random((5, 40)) > 0.8), rng.random(40)
    cand = torch.from_numpy(rng.random((5, 40)) > 0.1)
    w = BlendWeights(0.2, 0.5, 0.3)
    full = blend_scores(cand, w, text, co, pop)
    for b in range(5):
        one = blend_scores(cand[b : b + 1], w, text[b : b + 1], co[b : b + 1], pop)
        assert torch.allclose(full[b : b + 1], one, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_zscore_topk_equals_ranking_the_normalised_blend(seed: int) -> None:
    """blend_topk's z-score path (scaled signals, per-user constant added back to the k
    values) gives the lists and values of ranking blend_scores itself, including users
    with few or no candidates, a signal constant over a user's candidates, a sparse
    co-occurrence and one popularity vector for all users."""
    rng = np.random.default_rng(seed)
    b, n, k = 9, 300, 10
    text = rng.standard_normal((b, n)).astype(np.float32)
    co = (rng.random((b, n)) * (rng.random((b, n)) > 0.95)).astype(np.float32)
    pop = np.log1p(rng.integers(0, 50, n)).astype(np.float32)
    cand = torch.from_numpy(rng.random((b, n)) > 0.2)
    cand[1] = False  # no candidate at all
    cand[2] = False
    cand[2, :4] = True  # fewer candidates than k
    text[3] = 0.7  # constant text for user 3 (a user without a profile)
    co[4] = 0.0  # no co-occurrence evidence
    co[5, ~cand[5].numpy()] = 5.0  # evidence only on excluded items: constant over the candidates
    for w in (BlendWeights(0.7, 0.2, 0.1), BlendWeights(0.0, 1.0, 0.0), BlendWeights(0.2, 0.6, 0.2), EQUAL_WEIGHTS):
        ref = blend_scores(cand, w, text, co, pop)
        ref_vals, _ = torch.topk(ref, k, dim=1)
        vals, rows = blend_topk(cand, w, k, text, co, pop)
        np.testing.assert_allclose(vals.numpy(), ref_vals.numpy(), rtol=1e-4, atol=1e-4)
        # each listed item's reference score is the value given (ties may list either item)
        got = torch.gather(ref, 1, rows)
        np.testing.assert_allclose(got.numpy(), ref_vals.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="finite"):
        bad = text.copy()
        bad[0, int(torch.nonzero(cand[0])[0])] = np.nan
        blend_topk(cand, EQUAL_WEIGHTS, k, bad, co, pop)


def test_candidate_mask() -> None:
    valid = mask([1, 1, 0, 1])
    m = candidate_mask(valid, [(), (0, 3), [1]])
    assert m.tolist() == [[True, True, False, True], [False, True, False, False], [True, False, False, True]]
    with pytest.raises(ValueError, match="out of range"):
        candidate_mask(valid, [(4,)])


# --------------------------------------------------------------------------- with the item matrix


def test_blend_score_topk_on_an_item_matrix_excludes_what_the_engine_excludes() -> None:
    matrix = ItemMatrix(3, capacity=2)
    matrix.upsert(["a", "b", "c", "d"], np.eye(4, 3, dtype=np.float32) + 0.01)
    matrix.remove("c")
    model = DecayedProfileModel(dim=3)
    profile = model.new_profile("u")
    model.apply(profile, kind="purchase", item_id="a", ts=0, item_vec=matrix.vector("a"), text_vec=None, rating=None)
    model.apply(profile, kind="click", item_id="b", ts=1, item_vec=matrix.vector("b"), text_vec=None, rating=None)
    assert exclusion_set(profile) == {"a", "b"}  # purchased and seen
    assert exclusion_set(profile, exclude_seen=False) == {"a"}  # purchased always
    q = model.query(profile)
    res = blend_score_topk(matrix, np.stack([q, np.zeros(3, np.float32)]), 5, [exclusion_set(profile), set()], BlendWeights(1, 0, 0))
    assert [r.item_id for r in res[0]] == ["d"]  # a, b excluded, c removed from the matrix
    assert [r.because for r in res[0]] == [None]
    # a zero query: text is constant, popularity decides
    pop = popularity_vector(_popularity({"d": 3, "b": 1}), [matrix.id_at(r) for r in range(matrix.rows_used)], 0)
    res = blend_score_topk(matrix, np.zeros((1, 3), np.float32), 2, [set()], EQUAL_WEIGHTS, popularity=pop)
    assert [r.item_id for r in res[0]] == ["d", "b"]
    assert text_scores(matrix, q).shape == (1, matrix.rows_used)
    with pytest.raises(ValueError, match="exclude has"):
        blend_score_topk(matrix, np.zeros((2, 3), np.float32), 2, [set()], EQUAL_WEIGHTS)


def _popularity(counts: dict[str, int]) -> DecayedPopularity:
    pop = DecayedPopularity(1000.0)
    for item, n in counts.items():
        for _ in range(n):
            pop.add(item, 0)
    return pop


def test_popularity_vector() -> None:
    pop = _popularity({"a": 3, "b": 1})
    v = popularity_vector(pop, ["b", None, "a", "zz"], now_ms=1000)  # one half-life later
    assert v.dtype == np.float32
    assert v.tolist() == pytest.approx([math.log1p(0.5), 0.0, math.log1p(1.5), 0.0])


def test_popularity_vector_equals_each_items_decayed_count() -> None:
    """The vectorised form against the popularity's own scalar score, including counts
    long before their events (capped shift) and far in the future (underflow to 0)."""
    rng = np.random.default_rng(5)
    pop = DecayedPopularity(1000.0)
    for n in range(300):
        pop.add(f"i{rng.integers(40)}", int(rng.integers(0, 50_000)))
    ids = [f"i{j}" for j in range(45)] + [None]
    for now in (-(10**9), 0, 25_000, 60_000, 10**9):
        want = [0.0 if i is None else math.log1p(pop.score(i, now)) for i in ids]
        np.testing.assert_allclose(popularity_vector(pop, ids, now), want, rtol=1e-6)
