"""Multiple-choice scoring of causal LMs, as lm-eval-harness does it; shared by both tracks' causal-LM setups.

An item is ``{"prompt": str, "options": [str, ...]}`` and its label the
index of the right option. Each option is scored by its log-likelihood as a
continuation of the prompt (:func:`continuation_logprobs`, lm-eval's
``loglikelihood``); the argmax is the prediction (:func:`choose`: ``acc``,
or ``acc_norm`` per character). Fine-tuning minimises the loss of the right
option's tokens only (:func:`answer_loss`), so it raises exactly the
quantity that scoring compares. :class:`MultipleChoiceLM` gives a setup its
batches, loss and predictions from these; :func:`tie_aware` lists a tied
output layer once in a body's state dict.

Used by :class:`lsedu.zoo.causal_lm.CausalLMSetup` (SmolLM2, laptop) and
:class:`lsedu.zoo.paper.GPT2XL` (paper), and by RoBERTa's tied MLM head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Forward, Split

Item = Mapping[str, Any]  # {"prompt": str, "options": [str, ...]}


def check_items(items: Sequence[Item], labels: Sequence[int] | torch.Tensor | None = None, *,
                arg: str = "items") -> None:
    """ValueError naming the first bad item: no prompt, fewer than 2 options, or a label out of range.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"{arg} must be a list of {{'prompt', 'options'}} dicts, got {type(items).__name__}")
    for i, it in enumerate(items):
        if not isinstance(it, Mapping) or "prompt" not in it or "options" not in it:
            raise ValueError(f"{arg}[{i}] must be a dict with 'prompt' and 'options', got {it!r:.80}")
        if not isinstance(it["prompt"], str) or not it["prompt"].strip():
            raise ValueError(f"{arg}[{i}]['prompt'] must be a non-empty string, got {it['prompt']!r:.80}")
        opts = it["options"]
        if isinstance(opts, str) or not isinstance(opts, Sequence) or len(opts) < 2:
            raise ValueError(f"{arg}[{i}] needs at least 2 options, got {opts!r:.80}")
        if not all(isinstance(o, str) and o for o in opts):
            raise ValueError(f"{arg}[{i}]['options'] must be non-empty strings, got {opts!r:.80}")
    if labels is not None:
        labels = [int(x) for x in labels]
        if len(labels) != len(items):
            raise ValueError(f"{arg} has {len(items)} items but {len(labels)} labels")
        for i, (it, y) in enumerate(zip(items, labels)):
            if not 0 <= y < len(it["options"]):
                raise ValueError(f"label {y} of {arg}[{i}] is out of range for its {len(it['options'])} options")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, split as lm-eval-harness splits them.

    As ``lm_eval``'s ``_encode_pair``: trailing whitespace of the context
    moves to the continuation, the two are tokenized *together* (so a merge
    across the boundary is the one the model sees), and the continuation is
    whatever follows the context's own tokens. No special tokens are added.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx:
        raise ValueError(f"context {context!r:.60} has no tokens; scoring needs a non-empty context")
    return ctx, whole[len(ctx):]


def encode_choices(tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One right-padded row per ``(context, continuation)`` pair, ready for :func:`continuation_logprobs`.

    Returns ``input_ids`` and ``attention_mask`` ``[N, L]`` (the pair's
    tokens minus the last one, as lm-eval feeds them), ``targets`` ``[N, L]``
    (the next token at each position) and ``target_mask`` ``[N, L]``, True
    at the positions whose next token belongs to the continuation.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    rows = []
    for c, x in zip(contexts, continuations):
        ctx, cont = encode_pair(tokenizer, c, x)
        if not cont:
            raise ValueError(f"continuation {x!r:.60} has no tokens after context {c!r:.60}")
        rows.append((ctx + cont, len(ctx)))
    width = max(len(ids) for ids, _ in rows) - 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {k: torch.full((len(rows), width), v, dtype=d)
           for k, v, d in (("input_ids", pad, torch.long), ("attention_mask", 0, torch.long),
                           ("targets", pad, torch.long), ("target_mask", False, torch.bool))}
    for i, (ids, n_ctx) in enumerate(rows):
        n = len(ids) - 1
        out["input_ids"][i, :n] = torch.tensor(ids[:-1])
        out["attention_mask"][i, :n] = 1
        out["targets"][i, :n] = torch.tensor(ids[1:])
        out["target_mask"][i, n_ctx - 1:n] = True  # position p predicts token p + 1
    return {k: v.to(device) for k, v in out.items()}


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward's output: a transformers ModelOutput, a tuple (logits first) or a tensor.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"forward returned {type(output).__name__}; expected logits or an object with .logits")


def continuation_logprobs(forward: Forward, enc: Mapping[str, torch.Tensor], max_tokens: int = 2048) -> torch.Tensor:
    """``[N]`` log P(continuation | context) of each row of ``enc`` (from :func:`encode_choices`).

    The sum over the continuation's tokens of log softmax of the logits, lm-eval-harness's
    ``loglikelihood``. Rows with the same input (options of one token after
    the same prompt: "positive" / "negative") differ only in their last
    target, so, as lm-eval does, each distinct input runs through the model
    once. Inputs run in chunks of at most ``max_tokens`` tokens.

    When ``forward`` is a transformers causal LM, three shortcuts give the
    same numbers (to float32 rounding, tested against lm-eval) at a third of
    the cost (``benchmarks/bench_lm_scoring.py``): the prefix that every
    input shares (the chat template and the skill's instruction) runs once,
    and its keys and values are reused by every row (:func:`shared_prefix`);
    inputs are sorted by length and cut into the chunks that pad least
    (:func:`length_chunks`); and the output layer, a 49,152-way product at
    every position, runs only at the positions that predict a continuation
    token, once for the options that share such a position. Any other ``forward`` (a
    plain function returning logits) takes the direct route: full logits.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    n, width = enc["input_ids"].shape
    key = torch.cat([enc["input_ids"], enc["attention_mask"]], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    ids, mask = uniq[:, :width], uniq[:, width:]
    out = torch.zeros(n, device=enc["input_ids"].device)
    if _body_and_head(forward) is not None:
        return _scored_by_positions(forward, enc, ids, mask, inverse, out, max_tokens)
    step = max(1, max_tokens // max(width, 1))
    for s in range(0, len(uniq), step):
        logits = logits_of(forward(input_ids=ids[s:s + step], attention_mask=mask[s:s + step])).float()
        norm = torch.logsumexp(logits, -1)
        for u in range(s, min(s + step, len(uniq))):
            rows = torch.nonzero(inverse == u).flatten()
            lp = logits[u - s].gather(-1, enc["targets"][rows].T).T - norm[u - s]  # [rows, L]
            out[rows] = (lp * enc["target_mask"][rows]).sum(-1)
    return out


def _body_and_head(model) -> tuple[nn.Module, nn.Module] | None:
    """A transformers causal LM's body (hidden states, final norm applied) and output layer, or None."""
    body = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not isinstance(model, nn.Module) or body is None or body is model or get_head is None:
        return None
    head = get_head()
    return None if head is None else (body, head)


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor, first_target: torch.Tensor) -> int:
    """How many leading tokens every row of ``ids`` shares, up to (not into) its first predicting position.

    The hidden state at position p predicts token p + 1, so a row's
    positions from ``first_target`` on must run with the row; the ones
    before, when every row has the same tokens there, run once for all.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) score with it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    limit = int(first_target.min())
    same = (ids[:, :limit] == ids[:1, :limit]).all(0) & (mask[:, :limit] == 1).all(0)
    differ = torch.nonzero(~same)
    return int(differ[0]) if len(differ) else limit


def length_chunks(lengths: Sequence[int], max_tokens: int, overhead: int = 64) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` chunks of ``lengths`` (sorted longest first) that cost the fewest padded tokens.

    A chunk of rows runs as one batch padded to its first (longest) row, so
    it costs ``len(chunk) * lengths[start]`` tokens, plus ``overhead`` tokens'
    worth for the forward call itself, and it holds at most ``max_tokens``
    padded tokens (a single longer row runs alone). Dynamic programming over
    the cut points finds the cheapest split: a batch of a few long inputs and
    many short ones runs as two forwards, not one padded to the longest.

    Not called in a notebook: :func:`continuation_logprobs` batches with it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    n = len(lengths)
    if any(lengths[i] < lengths[i + 1] for i in range(n - 1)):
        raise ValueError("lengths must be sorted longest first")
    best = [float("inf")] * n + [0.0]  # best[i]: the cheapest split of lengths[i:], filled from the end
    cut = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        width = max(int(lengths[i]), 1)
        for j in range(i + 1, min(n, i + max(1, max_tokens // width)) + 1):
            cost = (j - i) * width + overhead + best[j]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    chunks, i = [], 0
    while i < n:
        chunks.append((i, cut[i]))
        i = cut[i]
    return chunks


def _scored_by_positions(model, enc, ids, mask, inverse, out, max_tokens: int) -> torch.Tensor:
    """:func:`continuation_logprobs` for a transformers causal LM: shared prefix once, head at the targets only."""
    body, head = _body_and_head(model)
    from transformers import DynamicCache

    # Each row's (position, target) pairs, grouped by the distinct input they read.
    row_pos = [torch.nonzero(m).flatten() for m in enc["target_mask"]]
    first = torch.stack([p.min() for p in row_pos])
    first_u = torch.full((len(ids),), ids.shape[1], dtype=torch.long).scatter_reduce(0, inverse, first, "amin")
    P = shared_prefix(ids, mask, first_u)
    past = None
    if P:
        past = body(input_ids=ids[:1, :P], attention_mask=mask[:1, :P], use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in past.layers]
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    rows_of = [[] for _ in range(len(ids))]
    for r, u in enumerate(inverse.tolist()):
        rows_of[u].append(r)
    for start, stop in length_chunks((lengths[order] - P).tolist(), max_tokens):
        chunk = order[start:stop]
        w = int(lengths[chunk[0]]) - P  # the longest suffix in this chunk (sorted: the first)
        B = len(chunk)
        kw = {"input_ids": ids[chunk, P:P + w], "attention_mask": mask[chunk, :P + w],
              "position_ids": torch.arange(P, P + w, device=ids.device).expand(B, w)}
        if P:
            kw["past_key_values"] = DynamicCache([(k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:]))
                                                  for k, v in layers])
        hidden = body(**kw, use_cache=bool(P)).last_hidden_state  # [B, w, H]
        b_idx, pos, tgt, dest = [], [], [], []
        for j, u in enumerate(chunk.tolist()):
            for r in rows_of[u]:
                p = row_pos[r]
                b_idx.append(torch.full_like(p, j))
                pos.append(p - P)
                tgt.append(enc["targets"][r, p])
                dest.append(torch.full_like(p, r))
        b_idx, pos, tgt, dest = (torch.cat(x) for x in (b_idx, pos, tgt, dest))
        # The options of an item that differ only in their last token predict it from the same position: the
        # output layer and its normaliser run once per distinct (row, position), then each target reads its logit.
        where, at = torch.unique(b_idx * w + pos, return_inverse=True)
        logits = head(hidden[where // w, where % w]).float()  # [positions, vocab]: only where a target is predicted
        lp = logits[at, tgt] - torch.logsumexp(logits, -1)[at]
        out.index_add_(0, dest, lp)
    del past
    return out


def answer_loss(forward: Forward, enc: Mapping[str, torch.Tensor], *,
                transformers_lm: bool | None = None) -> torch.Tensor:
    """Causal LM loss on the continuation tokens only: mean cross-entropy over them, prompt tokens masked out.

    ``transformers_lm``: whether ``forward`` takes a transformers causal LM's
    keywords (``past_key_values``, ``position_ids``, ``logits_to_keep``), as
    the model itself does and so does ``functional_call`` of it (trained
    localization's masked forward); None: only if ``forward`` is such a
    model. Then the prefix shared by every row runs once and its keys and
    values serve every row, and the output layer runs only at the columns
    holding a target (:func:`_answer_loss_shortcut`): the same loss and
    gradients to float32 rounding (tested); a fine-tuning step of SmolLM2,
    AdamW included, takes about 0.8x the time (``benchmarks/bench_train.py``).
    Otherwise every row runs whole and the logits come at every position.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    mask = enc["target_mask"]
    if transformers_lm is None:
        transformers_lm = _body_and_head(forward) is not None
    if transformers_lm:
        return _answer_loss_shortcut(forward, enc)
    logits = logits_of(forward(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    return F.cross_entropy(logits[mask].float(), enc["targets"][mask])


def _answer_loss_shortcut(forward: Forward, enc: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """:func:`answer_loss` through a transformers causal LM's keywords: shared prefix once, logits at targets only.

    Gradients flow through the prefix's keys and values into every row that
    reads them, so the weights get the same gradient as without the shortcut.
    """
    from transformers import DynamicCache

    ids, mask, targets, tmask = enc["input_ids"], enc["attention_mask"], enc["targets"], enc["target_mask"]
    B, L = ids.shape
    empty = torch.nonzero(~tmask.any(1)).flatten()
    if len(empty):
        raise ValueError(f"row {int(empty[0])} of the answer batch has no target token (target_mask is all False)")
    first = tmask.to(torch.int8).argmax(1)  # each row's first predicting position
    P = shared_prefix(ids, mask, first)
    kw = {}
    if P:
        past = forward(input_ids=ids[:1, :P], attention_mask=mask[:1, :P], use_cache=True,
                       logits_to_keep=1).past_key_values
        kw["past_key_values"] = DynamicCache([(layer.keys.expand(B, *layer.keys.shape[1:]),
                                               layer.values.expand(B, *layer.values.shape[1:]))
                                              for layer in past.layers])
    cols = torch.nonzero(tmask.any(0)).flatten()  # the positions where some row predicts an answer token
    out = forward(input_ids=ids[:, P:], attention_mask=mask, position_ids=torch.arange(P, L, device=ids.device)
                  .expand(B, L - P), use_cache=False, logits_to_keep=cols - P, **kw)
    keep = tmask[:, cols]
    return F.cross_entropy(logits_of(out)[keep].float(), targets[:, cols][keep])


def choice_logprobs(forward: Forward, tokenizer, items: Sequence[Item], *,
                    template: Callable[[str], str] | None = None, device: str | torch.device = "cpu",
                    max_tokens: int = 2048) -> list[torch.Tensor]:
    """Per item, ``[n_options]`` log-likelihoods of its options as continuations of its prompt.

    lm-eval-harness multiple choice: the context is ``template(prompt)``
    (the prompt itself if no template), each option is scored with
    :func:`continuation_logprobs`. Use :func:`choose` to turn them into predictions.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    check_items(items)
    contexts, conts = [], []
    for it in items:
        ctx = template(it["prompt"]) if template else it["prompt"]
        contexts += [ctx] * len(it["options"])
        conts += list(it["options"])
    scores = continuation_logprobs(forward, encode_choices(tokenizer, contexts, conts, device), max_tokens)
    counts = [len(it["options"]) for it in items]
    return list(scores.detach().cpu().split(counts))


def choose(scores: Sequence[torch.Tensor], items: Sequence[Item], norm: bool = False) -> torch.Tensor:
    """``[n_items]`` predicted option index: argmax of the log-likelihoods (``acc``).

    ``norm=True`` divides each log-likelihood by its option's length in
    characters first, lm-eval-harness's ``acc_norm``, which removes the
    advantage of short options.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """
    preds = []
    for s, it in zip(scores, items):
        if norm:
            s = s / torch.tensor([float(len(o)) for o in it["options"]])
        preds.append(int(s.argmax()))
    return torch.tensor(preds, dtype=torch.long)


# ----------------------------------------------------------------------------- batches of items


@dataclass
class ChoiceBatch:
    """A batch of multiple-choice items: the right options encoded (for the loss) and all options (for scoring).

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """

    items: list
    labels: torch.Tensor
    answer: dict[str, torch.Tensor]
    choices: dict[str, torch.Tensor]
    counts: list[int] = field(default_factory=list)


class MultipleChoiceLM:
    """Batches, loss and predictions of a setup whose tasks are multiple-choice items (a mixin of a Setup).

    A subclass may override :meth:`context` (the text the model continues,
    e.g. a chat template) and :meth:`acc_norm` (whether a task is scored per
    character); it provides ``tokenizer`` and ``device``.

    Not called in a notebook: the causal-LM setups of both tracks (notebook 08) use it; see notebook 08
    (08_case_causal_lm.ipynb).
    """

    def context(self, prompt: str) -> str:
        """The text the model continues for ``prompt`` (the prompt itself unless overridden)."""
        return prompt

    def acc_norm(self, task: str) -> bool:
        """Whether ``task`` is scored with lm-eval's ``acc_norm`` (per character) rather than ``acc``."""
        return False

    def choice_batches(self, split: Split, order: torch.Tensor, batch_size: int) -> Iterator[ChoiceBatch]:
        """Batches (:class:`ChoiceBatch`) of ``split`` in ``order``: the right options (for the loss), all options."""
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            items = [split.inputs[int(i)] for i in idx]
            labels = split.labels[idx]
            ctx = [self.context(it["prompt"]) for it in items]
            answer = encode_choices(self.tokenizer, ctx, [it["options"][int(y)] for it, y in zip(items, labels)],
                                    self.device)
            flat = [(c, o) for c, it in zip(ctx, items) for o in it["options"]]
            choices = encode_choices(self.tokenizer, [c for c, _ in flat], [o for _, o in flat], self.device)
            yield ChoiceBatch(items, labels, answer, choices, [len(it["options"]) for it in items])

    def eval_order(self, task: str, split: Split) -> torch.Tensor:
        """Longest context first, by tokens: a batch of items then pads little (``Setup.eval_order``)."""
        ids = self.tokenizer([self.context(it["prompt"]) for it in split.inputs], add_special_tokens=False)["input_ids"]
        return torch.argsort(torch.tensor([len(x) for x in ids]), descending=True, stable=True)

    #: Whether the forward :meth:`loss` gets (the model, or ``functional_call`` of it) is a transformers causal
    #: LM's, which takes the keywords of :func:`answer_loss`'s shortcut; both tracks' setups are.
    transformers_lm: bool = True

    def loss(self, task: str, forward: Forward, batch: ChoiceBatch) -> torch.Tensor:
        """Causal LM loss of the right option's tokens (what scoring compares)."""
        return answer_loss(forward, batch.answer, transformers_lm=self.transformers_lm)

    def predict(self, task: str, forward: Forward, batch: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The option with the highest log-likelihood (per character with :meth:`acc_norm`), and the labels."""
        scores = continuation_logprobs(forward, batch.choices).detach().cpu().split(batch.counts)
        return choose(scores, batch.items, norm=self.acc_norm(task)), batch.labels


# ----------------------------------------------------------------------------- tied weights


class TiedHead(nn.Module):
    """An output layer that *reads* the input embedding's weight at every call, and owns no parameter.

    ``logits = hidden @ embedding.weight.T (+ bias)``. The embedding module
    is held outside the module tree, so the weight is listed once, under the
    embedding's name, in ``state_dict()``, ``named_parameters()`` and task
    vectors; and whatever replaces that weight (``load_state_dict``, or
    ``torch.func.functional_call`` with or without ``tie_weights``, as
    :func:`lsedu.localize_trained` does) reaches the output layer too.

    Not called in a notebook: ``tie_aware`` gives it to the tied LMs of notebook 08 (both tracks) and of notebook 06's
    paper track; see notebook 08 (08_case_causal_lm.ipynb).
    """

    def __init__(self, embedding: nn.Embedding, bias: torch.Tensor | None = None):
        super().__init__()
        self._embedding = (embedding,)  # a tuple: not registered as a submodule
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        # transformers' model.tie_weights() (called by lm-eval's HFLM) sets lm_head.weight to the
        # embedding's weight: that is already so here, and any other weight would break the tie.
        if name == "weight":
            if param is not self._embedding[0].weight:
                raise ValueError("the output layer is tied to the input embedding; set the embedding's weight")
            return
        super().register_parameter(name, param)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self._embedding[0].weight, self.bias)


def tie_aware(model: nn.Module) -> nn.Module:
    """Give a tied transformers LM a :class:`TiedHead`, so its state dict holds the tied matrix once.

    For SmolLM2 (and GPT-2): ``lm_head.weight`` is ``model.embed_tokens.weight``
    (``wte``); after this call the state dict has 272 entries, not 273, and
    a state dict that still holds ``lm_head.weight`` loads only if it equals
    the embedding (it is dropped), else ValueError: tied weights cannot
    differ. An untied model is returned unchanged. Returns ``model``.

    Not called in a notebook: the tied LMs of notebook 08 (both tracks) and of notebook 06's paper track use it; see
    notebook 08 (08_case_causal_lm.ipynb).
    """
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or isinstance(out, TiedHead) or out.weight is not inp.weight:
        return model
    alias = next(n for n, m in model.named_modules() if m is out) + ".weight"
    source = next(n for n, m in model.named_modules() if m is inp) + ".weight"
    model.set_output_embeddings(TiedHead(inp, getattr(out, "bias", None)))

    def drop_alias(module, state_dict, prefix, *args):
        if prefix + alias in state_dict:
            value = state_dict.pop(prefix + alias)
            if prefix + source in state_dict and not torch.equal(value, state_dict[prefix + source]):
                raise ValueError(f"state dict holds {alias!r} different from {source!r}, but they are tied "
                                 f"(one tensor in this model)")

    model.register_load_state_dict_pre_hook(drop_alias)
    return model
