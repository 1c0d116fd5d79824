"""Float64 brute-force references of the similarity pair and proxy losses: loops over anchors and
pairs, written from the papers' formulas and pytorch-metric-learning's reducers (not from the
code under test). Scalars are 0-d float64 tensors so autograd gives the reference gradients."""

from __future__ import annotations

import torch


def unit(rows):
    """Each row divided by its Euclidean norm."""
    return [row / torch.sqrt(sum(value * value for value in row)) for row in rows]


def value(u, v, distance):
    """Cosine of unit vectors, or their (squared) Euclidean distance from the differences."""
    if distance == "cosine":
        return sum(a * b for a, b in zip(u, v, strict=True))
    squared = sum((a - b) * (a - b) for a, b in zip(u, v, strict=True))
    if distance == "squared_euclidean":
        return squared
    return torch.sqrt(squared) if float(squared.detach()) > 1e-12 else squared * 0.0


def zero():
    return torch.zeros((), dtype=torch.float64)


def log_sum_exp(terms):
    """log Σ exp(t) of a non-empty list of scalars (max-shifted)."""
    top = max(float(t.detach()) for t in terms)
    return top + torch.log(sum(torch.exp(t - top) for t in terms))


def softplus(t):
    return torch.log1p(torch.exp(t)) if float(t.detach()) < 30 else t + torch.log1p(torch.exp(-t))


def pairs(labels, ref_labels, same_set, indices_tuple=None):
    """Per anchor, its positive and negative reference indices (lists, repeats kept)."""
    n = len(labels)
    positives = [[] for _ in range(n)]
    negatives = [[] for _ in range(n)]
    if indices_tuple is None:
        for i in range(n):
            for j in range(len(ref_labels)):
                if same_set and i == j:
                    continue
                (positives if labels[i] == ref_labels[j] else negatives)[i].append(j)
        return positives, negatives
    parts = [part.tolist() for part in indices_tuple]
    if len(parts) == 3:
        parts = [parts[0], parts[1], parts[0], parts[2]]
    for a, p in zip(parts[0], parts[1], strict=True):
        positives[a].append(p)
    for a, q in zip(parts[2], parts[3], strict=True):
        negatives[a].append(q)
    return positives, negatives


def unique(lists):
    """Mask semantics (PML's mat-based losses): a pair listed twice counts once."""
    return [sorted(set(items)) for items in lists]


def mean(losses, nonzero=False):
    if nonzero:
        losses = [loss for loss in losses if float(loss.detach()) > 0]
    if not losses:
        return torch.zeros((), dtype=torch.float64)
    return sum(losses) / len(losses)


def multi_similarity(
    x, labels, alpha, beta, base, distance="cosine", refs=None, ref_labels=None, indices_tuple=None
):
    sign = 1.0 if distance == "cosine" else -1.0
    u = unit(x)
    r = u if refs is None else unit(refs)
    rl = labels if ref_labels is None else ref_labels
    positives, negatives = pairs(labels, rl, refs is None, indices_tuple)
    positives, negatives = unique(positives), unique(negatives)
    losses = []
    for i in range(len(u)):
        pos = sum(
            (torch.exp(-sign * alpha * (value(u[i], r[p], distance) - base)) for p in positives[i]),
            zero(),
        )
        neg = sum(
            (torch.exp(sign * beta * (value(u[i], r[q], distance) - base)) for q in negatives[i]),
            zero(),
        )
        losses.append(torch.log(1 + pos) / alpha + torch.log(1 + neg) / beta)
    return mean(losses)


def circle(x, labels, m, gamma, refs=None, ref_labels=None, indices_tuple=None):
    """Sun et al. eq. (4) with O_p = 1 + m, O_n = −m, Δ_p = 1 − m, Δ_n = m, weights detached."""
    u = unit(x)
    r = u if refs is None else unit(refs)
    rl = labels if ref_labels is None else ref_labels
    positives, negatives = pairs(labels, rl, refs is None, indices_tuple)
    positives, negatives = unique(positives), unique(negatives)
    losses = []
    for i in range(len(u)):
        if not positives[i] or not negatives[i]:
            losses.append(torch.zeros((), dtype=torch.float64))
            continue
        pos_terms, neg_terms = [], []
        for p in positives[i]:
            s = value(u[i], r[p], "cosine")
            weight = torch.relu(1 + m - s.detach())
            pos_terms.append(-gamma * weight * (s - (1 - m)))
        for q in negatives[i]:
            s = value(u[i], r[q], "cosine")
            weight = torch.relu(s.detach() + m)
            neg_terms.append(gamma * weight * (s - m))
        losses.append(softplus(log_sum_exp(pos_terms) + log_sum_exp(neg_terms)))
    return mean(losses, nonzero=True)


def supcon(
    x, labels, temperature, distance="cosine", refs=None, ref_labels=None, indices_tuple=None
):
    """Khosla et al. L^sup_out: −1/|P| Σ_p log(exp(s_p/τ) / Σ_{a ∈ P ∪ N} exp(s_a/τ))."""
    sign = 1.0 if distance == "cosine" else -1.0
    u = unit(x)
    r = u if refs is None else unit(refs)
    rl = labels if ref_labels is None else ref_labels
    positives, negatives = pairs(labels, rl, refs is None, indices_tuple)
    positives, negatives = unique(positives), unique(negatives)
    if not any(positives) or not any(negatives):
        return torch.zeros((), dtype=torch.float64)
    losses = []
    for i in range(len(u)):
        if not positives[i]:
            losses.append(torch.zeros((), dtype=torch.float64))
            continue
        logits = {
            j: sign * value(u[i], r[j], distance) / temperature for j in positives[i] + negatives[i]
        }
        denominator = log_sum_exp(list(logits.values()))
        losses.append(-sum(logits[p] - denominator for p in positives[i]) / len(positives[i]))
    return mean(losses, nonzero=True)


def ntxent(
    x, labels, temperature, distance="cosine", refs=None, ref_labels=None, indices_tuple=None
):
    """Per positive pair: −log(e^{s_ap/τ} / (e^{s_ap/τ} + Σ_n e^{s_an/τ})), mean over pairs."""
    sign = 1.0 if distance == "cosine" else -1.0
    u = unit(x)
    r = u if refs is None else unit(refs)
    rl = labels if ref_labels is None else ref_labels
    positives, negatives = pairs(labels, rl, refs is None, indices_tuple)
    if not any(positives) or not any(negatives):
        return torch.zeros((), dtype=torch.float64)
    losses = []
    for i in range(len(u)):
        for p in positives[i]:
            positive = sign * value(u[i], r[p], distance) / temperature
            terms = [positive] + [
                sign * value(u[i], r[q], distance) / temperature for q in negatives[i]
            ]
            losses.append(log_sum_exp(terms) - positive)
    return mean(losses)


def proxy_anchor(x, labels, proxies, margin, alpha):
    """Kim et al. eq. (4) with PML's divisors: classes present / all classes."""
    u, p = unit(x), unit(proxies)
    present = sorted(set(labels))
    pos_total = neg_total = 0.0
    for c in range(len(p)):
        pos = [
            torch.exp(-alpha * (value(u[i], p[c], "cosine") - margin))
            for i in range(len(u))
            if labels[i] == c
        ]
        neg = [
            torch.exp(alpha * (value(u[i], p[c], "cosine") + margin))
            for i in range(len(u))
            if labels[i] != c
        ]
        if pos:
            pos_total = pos_total + torch.log(1 + sum(pos))
        if neg:
            neg_total = neg_total + torch.log(1 + sum(neg))
    return pos_total / len(present) + neg_total / len(p)


def proxy_nca(x, labels, proxies, scale, distance="squared_euclidean"):
    """−log softmax over all proxies of −scale · d²(x, p_c) at the own class, mean over rows."""
    sign = 1.0 if distance == "cosine" else -1.0
    u, p = unit(x), unit(proxies)
    losses = []
    for i in range(len(u)):
        logits = [sign * scale * value(u[i], p[c], distance) for c in range(len(p))]
        losses.append(log_sum_exp(logits) - logits[labels[i]])
    return mean(losses)


def lifted_structure(x, labels, neg_margin, pos_margin, distance="euclidean", indices_tuple=None):
    """Per positive pair (a, p): ½ [log(Σ_{N(a)} e^{m_n − d} + Σ_{N(p)} e^{m_n − d}) + d_ap − m_p]²₊."""
    sign = -1.0 if distance == "cosine" else 1.0  # similarities reverse PML's margins
    u = unit(x)
    positives, negatives = pairs(labels, labels, True, indices_tuple)
    if not any(positives) or not any(negatives):
        return torch.zeros((), dtype=torch.float64)
    losses = []
    for a in range(len(u)):
        for p in positives[a]:
            terms = [
                sign * (neg_margin - value(u[end], u[q], distance))
                for end in (a, p)
                for q in negatives[end]
            ]
            negative = log_sum_exp(terms) if terms else torch.zeros((), dtype=torch.float64)
            positive = sign * (value(u[a], u[p], distance) - pos_margin)
            losses.append(torch.relu(negative + positive) ** 2 / 2)
    return mean(losses)


def generalized_lifted(x, labels, neg_margin, pos_margin, distance="euclidean", indices_tuple=None):
    """Hermans et al. p. 4: [log Σ_P e^{d − m_p} + log Σ_N e^{m_n − d}]₊, empty log-sum = 0."""
    sign = -1.0 if distance == "cosine" else 1.0
    u = unit(x)
    positives, negatives = pairs(labels, labels, True, indices_tuple)
    positives, negatives = unique(positives), unique(negatives)
    zero = torch.zeros((), dtype=torch.float64)
    losses = []
    for i in range(len(u)):
        pos = [sign * (value(u[i], u[p], distance) - pos_margin) for p in positives[i]]
        neg = [sign * (neg_margin - value(u[i], u[q], distance)) for q in negatives[i]]
        total = (log_sum_exp(pos) if pos else zero) + (log_sum_exp(neg) if neg else zero)
        losses.append(torch.relu(total))
    return mean(losses)


def npairs(x, labels):
    """Sohn's N-pair loss on PML's pairs: per label, its first item and its second."""
    u = unit(x)
    chosen = []
    for label in sorted(set(labels)):
        members = [i for i in range(len(labels)) if labels[i] == label]
        if len(members) >= 2:
            chosen.append((members[0], members[1]))
    losses = []
    for a, p in chosen:
        logits = [value(u[a], u[q], "cosine") for _, q in chosen]
        losses.append(log_sum_exp(logits) - value(u[a], u[p], "cosine"))
    return mean(losses)


def fast_ap(x, labels, num_bins):
    """Cakir et al. eq. (9) with PML's triangular bins over squared distances in [0, 4]."""
    u = unit(x)
    width = 4.0 / num_bins
    centers = [k * width for k in range(num_bins + 1)]
    losses = []
    for i in range(len(u)):
        positives = [j for j in range(len(u)) if j != i and labels[j] == labels[i]]
        negatives = [j for j in range(len(u)) if labels[j] != labels[i]]
        if not positives:
            continue
        pulse = [
            [
                torch.relu(1 - torch.abs(value(u[i], u[j], "squared_euclidean") - c) / width)
                for c in centers
            ]
            for j in range(len(u))
        ]
        h_pos = [sum(pulse[j][k] for j in positives) for k in range(len(centers))]
        h_all = [h_pos[k] + sum(pulse[j][k] for j in negatives) for k in range(len(centers))]
        ap, cum_pos, cum_all = 0.0, 0.0, 0.0
        for k in range(len(centers)):
            cum_pos, cum_all = cum_pos + h_pos[k], cum_all + h_all[k]
            if float((h_pos[k] * cum_pos).detach()) > 0 and float(cum_all.detach()) > 0:
                ap = ap + h_pos[k] * cum_pos / cum_all
        losses.append(1 - ap / len(positives))
    return mean(losses)
