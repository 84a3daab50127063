"""Genotype derivation rules (DARTS, PC-DARTS α·β, top-k pairs, NAS-Bench-201) and JSON files."""

import json
import os

import pytest
import torch

import fastdarts
from fastdarts.gates import PartialChannelMixing
from fastdarts.genotype import (
    Genotype,
    NB201Genotype,
    derive_darts_cell,
    derive_nb201,
    derive_topk_pairs_cell,
    load_genotype,
    save_genotype,
)
from fastdarts.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES
from fastdarts.spaces.darts import DartsSupernet

PRIMS = list(DARTS_PRIMITIVES)
E = 14
K = len(PRIMS)
IDX = {p: i for i, p in enumerate(PRIMS)}



def _edges(node):
    """Global edge indices of node ``node`` (0..3) in a 4-step cell."""
    start = sum(i + 2 for i in range(node))
    return list(range(start, start + node + 2))


def _per_edge(prims=PRIMS, n=E):
    return [tuple(prims)] * n


# ------------------------------------------------------------------------------------------ DARTS rule


def test_darts_rule_ignores_none_and_picks_best_edges():
    scores = torch.full((E, K), 0.01)
    # node 0 (edges 0, 1): both kept; 'none' is by far the largest on edge 0 and must not count.
    scores[0, IDX["none"]] = 0.9
    scores[0, IDX["sep_conv_3x3"]] = 0.05
    scores[1, IDX["max_pool_3x3"]] = 0.2
    # node 1 (edges 2, 3, 4): edge 2 has a huge 'none' but weak ops, edges 3 and 4 win.
    scores[2, IDX["none"]] = 0.99
    scores[2, IDX["avg_pool_3x3"]] = 0.02
    scores[3, IDX["dil_conv_5x5"]] = 0.3
    scores[4, IDX["skip_connect"]] = 0.4
    # node 2 (edges 5..8): inputs 3 and 1 win, in that order (sorted by score, descending).
    scores[5 + 1, IDX["sep_conv_5x5"]] = 0.5
    scores[5 + 3, IDX["dil_conv_3x3"]] = 0.6
    scores[5 + 0, IDX["none"]] = 0.95
    # node 3 (edges 9..13): inputs 4 then 0.
    scores[9 + 4, IDX["max_pool_3x3"]] = 0.7
    scores[9 + 0, IDX["sep_conv_3x3"]] = 0.45
    scores[9 + 2, IDX["none"]] = 0.97
    gene = derive_darts_cell(scores, _per_edge())
    assert gene == [
        ("max_pool_3x3", 1), ("sep_conv_3x3", 0),
        ("skip_connect", 2), ("dil_conv_5x5", 1),
        ("dil_conv_3x3", 3), ("sep_conv_5x5", 1),
        ("max_pool_3x3", 4), ("sep_conv_3x3", 0),
    ]
    assert all(op != "none" for op, _ in gene)


def _quark0_parse(weights, steps=4):
    """quark0/darts model_search.py ``genotype._parse``, written out for comparison."""
    gene, n, start = [], 2, 0
    none = PRIMS.index("none")
    for i in range(steps):
        end = start + n
        W = weights[start:end].copy()
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none:
                    if k_best is None or W[j][k] > W[j][k_best]:
                        k_best = k
            gene.append((PRIMS[k_best], j))
        start = end
        n += 1
    return gene


def test_darts_rule_ties_pick_lower_index():
    # All equal: quark0's stable sort keeps inputs 0, 1 and its strict '>' keeps the first non-none op.
    scores = torch.full((E, K), 0.125)
    gene = derive_darts_cell(scores, _per_edge())
    assert gene == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    assert gene == _quark0_parse(scores.numpy())
    # Tie between two ops on one edge and between two edges of a node.
    scores = torch.full((E, K), 0.01)
    for e in range(E):
        scores[e, IDX["sep_conv_3x3"]] = 0.3
        scores[e, IDX["dil_conv_3x3"]] = 0.3  # same value, higher index: loses
    scores[_edges(2)[3], IDX["skip_connect"]] = 0.3  # ties edge 3 of node 2 with edges 0..2 on the max
    gene = derive_darts_cell(scores, _per_edge())
    assert gene == _quark0_parse(scores.numpy())
    assert gene[4:6] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_darts_rule_matches_quark0_on_random_softmax():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.softmax(torch.randn(E, K, generator=g), dim=-1)
        assert derive_darts_cell(scores, _per_edge()) == _quark0_parse(scores.numpy())


def test_darts_rule_per_edge_primitives_without_none():
    # RobustDARTS-like: two ops per edge, no 'none': every op competes.
    prims = [("skip_connect", "sep_conv_3x3")] * E
    scores = torch.tensor([[0.6, 0.4]] * E)
    scores[_edges(0)[1]] = torch.tensor([0.1, 0.9])
    gene = derive_darts_cell(scores, prims)
    assert gene[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]
    with pytest.raises(ValueError, match="none"):
        derive_darts_cell(torch.ones(E, 1), [("none",)] * E)


def test_pcdarts_genotype_uses_alpha_times_beta():
    torch.manual_seed(0)
    net = DartsSupernet(4, 10, 3, partial_k=4, mixing=PartialChannelMixing(), backend="eager")
    a_n = torch.zeros(E, K)
    # node 0: both edges kept regardless. node 1: edge 2 (input 0) has the strongest op by α alone.
    a_n[2, IDX["sep_conv_3x3"]] = 3.0
    a_n[3, IDX["skip_connect"]] = 2.0
    a_n[4, IDX["max_pool_3x3"]] = 1.0
    with torch.no_grad():
        net.alphas_normal.copy_(a_n)
        net.alphas_reduce.copy_(a_n)
        net.betas_normal.zero_()
        net.betas_reduce.zero_()
    gene_alpha_only = net.genotype()
    assert gene_alpha_only.normal[2:4] == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    # β suppresses input 0 of node 1 and favours input 2: the kept edges change.
    with torch.no_grad():
        net.betas_normal[2] = -5.0
        net.betas_normal[4] = 3.0
    gene = net.genotype()
    assert gene.normal[2:4] == [("max_pool_3x3", 2), ("skip_connect", 1)]
    assert gene.reduce[2:4] == gene_alpha_only.reduce[2:4]  # reduce β untouched
    # Equal to the DARTS rule on softmax(α)·softmax_node(β).
    w = torch.softmax(net.alphas_normal, -1)
    b = torch.cat([torch.softmax(net.betas_normal[_edges(i)], -1) for i in range(4)])
    assert gene.normal == derive_darts_cell(w * b[:, None], _per_edge())


# ------------------------------------------------------------------------------------------ top-k pairs


def test_topk_pairs_two_ops_from_same_input():
    scores = torch.full((E, K), 0.01)
    scores[0, IDX["none"]] = 0.99  # ignored
    scores[0, IDX["sep_conv_3x3"]] = 0.5
    scores[0, IDX["dil_conv_5x5"]] = 0.4
    scores[1, IDX["skip_connect"]] = 0.3
    # node 1: both from input 2
    scores[4, IDX["avg_pool_3x3"]] = 0.7
    scores[4, IDX["max_pool_3x3"]] = 0.8
    scores[2, IDX["sep_conv_5x5"]] = 0.6
    gene = derive_topk_pairs_cell(scores, _per_edge())
    assert gene[:2] == [("sep_conv_3x3", 0), ("dil_conv_5x5", 0)]
    assert gene[2:4] == [("max_pool_3x3", 2), ("avg_pool_3x3", 2)]
    assert all(op != "none" for op, _ in gene)
    assert len(gene) == 8
    # DARTS rule on the same scores keeps two different inputs.
    darts = derive_darts_cell(scores, _per_edge())
    assert darts[0][1] != darts[1][1] and darts[2][1] != darts[3][1]


# ------------------------------------------------------------------------------------------ NAS-Bench-201


def test_nb201_rule_allows_none_and_tostr():
    P = list(NB201_PRIMITIVES)
    scores = torch.zeros(6, len(P))
    choice = ["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]
    for e, op in enumerate(choice):
        scores[e, P.index(op)] = 1.0
    g = derive_nb201(scores, P)
    assert isinstance(g, NB201Genotype)
    assert g == ((("nor_conv_3x3", 0),), (("none", 0), ("skip_connect", 1)),
                 (("avg_pool_3x3", 0), ("nor_conv_1x1", 1), ("none", 2)))
    assert g.tostr() == "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


# ------------------------------------------------------------------------------------------ JSON files


def _darts_genotype():
    return Genotype(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        reduce_concat=[2, 3, 4, 5],
    )


def test_json_round_trip_darts(tmp_path):
    g = _darts_genotype()
    path = str(tmp_path / "g.json")
    save_genotype(g, path)
    with open(path) as f:
        d = json.load(f)
    assert d["space"] == "darts" and d["normal"][0] == ["sep_conv_3x3", 0]
    back = fastdarts.load_genotype(path)
    assert isinstance(back, Genotype)
    assert back == g
    assert list(back.normal) == list(g.normal) and list(back.reduce_concat) == [2, 3, 4, 5]
    assert not os.path.exists(path + ".tmp")
    g.save(str(tmp_path / "h.json"))
    assert load_genotype(str(tmp_path / "h.json")) == g


def test_json_round_trip_supernet_genotype(tmp_path):
    torch.manual_seed(1)
    g = DartsSupernet(4, 10, 3, backend="eager").genotype()
    save_genotype(g, str(tmp_path / "s.json"))
    assert load_genotype(str(tmp_path / "s.json")) == g


def test_json_round_trip_nb201(tmp_path):
    g = NB201Genotype([[("nor_conv_3x3", 0)], [("none", 0), ("skip_connect", 1)],
                       [("avg_pool_3x3", 0), ("nor_conv_1x1", 1), ("none", 2)]])
    path = str(tmp_path / "nb.json")
    save_genotype(g, path)
    with open(path) as f:
        d = json.load(f)
    assert d["space"] == "nb201" and d["arch"] == g.tostr()
    back = load_genotype(path)
    assert isinstance(back, NB201Genotype)
    assert back == g and back.tostr() == g.tostr()


def test_load_missing_file_names_it(tmp_path):
    path = str(tmp_path / "nowhere" / "missing_genotype.json")
    with pytest.raises(FileNotFoundError, match="missing_genotype.json"):
        load_genotype(path)


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    json.dumps({"space": "darts", "normal": [["sep_conv_3x3", 0]]}),  # fields missing
    json.dumps({"space": "darts", "normal": "abc", "normal_concat": [2], "reduce": [], "reduce_concat": []}),
    json.dumps({"space": "darts", "normal": [["sep_conv_3x3", "x"]], "normal_concat": [2],
                "reduce": [], "reduce_concat": []}),
])
def test_load_invalid_files_raise_value_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_genotype(str(path))


@pytest.mark.parametrize("content", [
    json.dumps([1, 2, 3]),  # valid JSON, not an object
    json.dumps({"space": "nb201"}),  # nodes missing
    json.dumps({"space": "nb201", "nodes": [[["none"]]]}),  # malformed pair
])
def test_load_wrong_structure_raises_value_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_genotype(str(path))


def test_python_code_in_genotype_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    code = (f"Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=range(2, 6), "
            f"reduce=__import__('pathlib').Path({str(marker)!r}).touch() or [], reduce_concat=range(2, 6))")
    path = tmp_path / "evil.json"
    path.write_text(code)
    with pytest.raises(ValueError):
        load_genotype(str(path))
    assert not marker.exists()
    # Same inside a JSON string value.
    path.write_text(json.dumps({"space": "darts", "normal": code, "normal_concat": [2],
                                "reduce": [], "reduce_concat": []}))
    with pytest.raises(ValueError):
        load_genotype(str(path))
    assert not marker.exists()
