"""Building the dependency graph from the traversal's step records.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import networkx as nx
import numpy as np

from ssa.core.interfaces import Tap
from ssa.core.traversal import StepRecord

__all__ = ['node_id', 'build_graph']


def node_id(tap: str, neuron: int) -> str:
    return f"{tap}:{int(neuron)}"


def build_graph(*, taps: Sequence[Tap], steps: Sequence[StepRecord], target: int, n_images: int,
                active: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> nx.DiGraph:
    """Assemble the dependency graph from the traversal's step records.

    Vectorised over the kept edges of all steps: node attributes are group-wise reductions of
    the edges into each node (maximum frequency, mean relevance, in-degree, sign).
    """
    by_name = {t.name: t for t in taps}
    g = nx.DiGraph()
    g.graph.update({k: v for k, v in attrs.items()})
    g.graph["target"] = int(target)
    g.graph["n_images"] = int(n_images)
    names = list(by_name)
    code = {name: i for i, name in enumerate(names)}
    ups, los, ut, lt, freq, rel, sign = [], [], [], [], [], [], []
    for step in steps:
        m = len(step.kept_lower)
        if not m:
            continue
        ups.append(step.kept_upper)
        los.append(step.kept_lower)
        ut.append(np.full(m, code[step.upper], np.int64))
        lt.append(np.full(m, code[step.parent], np.int64))
        freq.append(step.kept_count)
        rel.append(step.kept_relevance)
        sign.append(step.kept_sign)
    top_code = code["logits"]
    if ups:
        u_tap, u_n = np.concatenate(ut), np.concatenate(ups).astype(np.int64)
        l_tap, l_n = np.concatenate(lt), np.concatenate(los).astype(np.int64)
        e_freq, e_rel, e_sign = np.concatenate(freq), np.concatenate(rel), np.concatenate(sign)
    else:
        u_tap = u_n = l_tap = l_n = e_freq = e_sign = np.zeros(0, np.int64)
        e_rel = np.zeros(0, np.float64)
    m = len(u_n)
    # nodes in order of first appearance: the class node, then (upper, lower) of every edge in turn
    seq_tap = np.concatenate([[top_code], np.stack([u_tap, l_tap], 1).reshape(-1)]).astype(np.int64)
    seq_n = np.concatenate([[int(target)], np.stack([u_n, l_n], 1).reshape(-1)]).astype(np.int64)
    width = int(max(seq_n.max(initial=0), 0)) + 1
    keys = seq_tap * width + seq_n
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    node_tap, node_n = seq_tap[first[order]], seq_n[first[order]]
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    node_of = rank[inverse]  # position of every sequence entry among the ordered nodes
    u_node, l_node = node_of[1::2], node_of[2::2]
    nn_ = len(node_tap)
    if m:  # an edge kept twice (positive and inhibitory): networkx keeps the first place, the last attributes
        pair = u_node * nn_ + l_node
        _, first_e = np.unique(pair, return_index=True)
        if len(first_e) < m:
            _, last_rev = np.unique(pair[::-1], return_index=True)
            last_e = m - 1 - last_rev
            keep = np.sort(first_e)
            src = dict(zip(pair[first_e].tolist(), last_e.tolist()))
            take = np.array([src[p] for p in pair[keep].tolist()], np.int64)
            u_node, l_node = u_node[keep], l_node[keep]
            e_freq, e_rel, e_sign = e_freq[take], e_rel[take], e_sign[take]
            m = len(u_node)
    indeg = np.bincount(l_node, minlength=nn_)
    fmax = np.zeros(nn_, np.int64)
    np.maximum.at(fmax, l_node, e_freq)
    rsum = np.zeros(nn_, np.float64)
    if m:  # mean of the in-edges' relevance
        by_node = np.argsort(l_node, kind="stable")
        ln = l_node[by_node]
        starts = np.flatnonzero(np.r_[True, ln[1:] != ln[:-1]])
        rsum[ln[starts]] = np.add.reduceat(e_rel[by_node], starts) / np.diff(np.r_[starts, m])
    anypos = np.zeros(nn_, bool)
    np.logical_or.at(anypos, l_node, e_sign > 0)
    ids = [f"{names[t]}:{int(k)}" for t, k in zip(node_tap, node_n)]
    nodes = []
    for i, (t, k) in enumerate(zip(node_tap, node_n)):
        tap = names[t]
        frac = active.get(tap)
        d = {"tap": tap, "tap_order": int(by_name[tap].order), "neuron": int(k), "frequency": 0,
             "mean_relevance": 0.0, "active_fraction": float(frac[k]) if frac is not None else float("nan"),
             "in_degree": 0, "sign": 1}
        if i == 0:
            d["frequency"] = int(n_images)
        elif indeg[i]:
            d["frequency"] = int(fmax[i])
            d["mean_relevance"] = float(rsum[i])
            d["in_degree"] = int(indeg[i])
            d["sign"] = 1 if anypos[i] else -1
        nodes.append((ids[i], d))
    g.add_nodes_from(nodes)
    g.add_edges_from((ids[a], ids[b], {"frequency": int(f), "relevance": float(r), "sign": int(s)})
                     for a, b, f, r, s in zip(u_node, l_node, e_freq, e_rel, e_sign))
    return g
