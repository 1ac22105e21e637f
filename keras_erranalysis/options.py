"""Grouped options of :class:`~keras_erranalysis.ErrorAnalysis` and the epoch pipeline.

The callback's flat options cover the common case. What is less common is grouped here:
how to decode (:class:`Decoding`), how to run the pass (:class:`PassOptions`), and the
extra analyses an epoch can add (:class:`AttentionAnalysis`, :class:`EmbeddingAnalysis`,
:class:`FeatureAnalysis`), passed as a list::

    ErrorAnalysis(
        val_ds,
        vocab=target_vocab,
        decoding=Decoding(input_vocab=source_vocab),
        analyses=[AttentionAnalysis(heatmaps=6), "embeddings"],
    )
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from keras_erranalysis.decoding import Vocabulary


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How ids become text in tables, reports and heatmaps.

    Each entry is a list, dict, lookup layer, callable or
    :class:`~keras_erranalysis.Vocabulary`; normalised to a ``Vocabulary`` on creation.

    Attributes:
        vocab: Decodes target tokens of sequence outputs.
        input_vocab: Decodes input tokens (the source text; also gives the feature
            comparison its text).
        label_names: Class names of a classifier.
    """

    vocab: Any = None
    input_vocab: Any = None
    label_names: Any = None

    def __post_init__(self) -> None:
        for name in ("vocab", "input_vocab", "label_names"):
            object.__setattr__(self, name, Vocabulary.from_any(getattr(self, name)))

    def as_dict(self) -> dict[str, Vocabulary | None]:
        """``{"vocab", "input_vocab", "label_names"}``, as the run folder stores them."""
        return {
            "vocab": self.vocab,
            "input_vocab": self.input_vocab,
            "label_names": self.label_names,
        }


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Options of the compiled pass (see :func:`~keras_erranalysis.compute_losses`).

    Attributes:
        loss: Loss to use (default: the model's compiled loss, unreduced).
        output: Output to analyze in a multi-output model (name or index).
        reduction: ``"mean"`` or ``"sum"`` over a sequence's counted tokens.
        ignore_class: Label id that does not count (e.g. -100, or 0 for padding).
        ids: Stable example ids in data order (default: positions).
        batch_size: Batch size of the pass when the data are arrays (``None``: chosen
            from a memory budget).
        jit_compile: XLA for the pass: ``True``, ``False`` or ``"auto"``.
    """

    loss: Any = None
    output: str | int | None = None
    reduction: Literal["mean", "sum"] = "mean"
    ignore_class: int | None = None
    ids: Any = None
    batch_size: int | None = None
    jit_compile: bool | Literal["auto"] = "auto"

    def as_dict(self) -> dict[str, Any]:
        """The options given (not ``None``) as keyword arguments of ``compute_losses``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: value for name, value in values.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class AttentionAnalysis:
    """Attention diagnostics per example, and heatmaps of the hardest examples.

    Adds entropy, uncovered source share, diagonality and monotonicity columns per
    attention layer, and saves heatmaps of the ``heatmaps`` hardest examples and of a
    fixed watch list of right ones (half as many) in each epoch folder. A model without
    attention layers is an error at the start of training.

    Attributes:
        layers: Layer paths or names (``None``: every attention layer of the model).
        heatmaps: Hardest examples drawn per epoch.
    """

    layers: Sequence[str] | None = None
    heatmaps: int = 4


@dataclasses.dataclass(frozen=True)
class EmbeddingAnalysis:
    """Each example's embedding per epoch (``embedding.npy``) for ``Run.similar`` and projector.

    Attributes:
        layer: Layer name (``None``: the default layer, see
            :func:`~keras_erranalysis.compute.default_layer`).
    """

    layer: str | None = None


@dataclasses.dataclass(frozen=True)
class FeatureAnalysis:
    """Wrong vs right examples compared feature by feature (``features.csv``).

    Without this in ``analyses`` the comparison still runs when the inputs can be decoded
    to text (``Decoding(input_vocab=...)``); with it, missing text is an error.

    Attributes:
        texts: The examples' raw texts in data order (default: decoded inputs).
        enabled: ``False`` switches the comparison off, even when text is available.
    """

    texts: Sequence[str] | None = None
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class DataHealth:
    """The data-health checks once, at the first analyzed epoch.

    Its tables: ``health`` (the issues), ``health_summary`` (the one-line summaries) and
    ``health_balance`` (the class balance); the report and TensorBoard show them.

    Runs :func:`~keras_erranalysis.check_data` with the model as it is then. The
    callback's data is the validation split; leakage and conflicting labels are measured
    against ``train`` when it is given.

    Attributes:
        train: The training set ``(x, y)`` (``None``: checks within the analyzed data only).
        texts: Raw texts: a list for the analyzed data, or ``{"train": ..., "validation": ...}``.
        threshold: Near-duplicate cut on 3-gram Jaccard similarity.
    """

    train: Any = None
    texts: Any = None
    threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class GenerationAnalysis:
    """Free-running (generated) outputs of a seq2seq model, per example, each analyzed epoch.

    The teacher-forced pass shows what the model predicts when fed the reference; this
    decodes each analyzed example the way the model runs at inference, fed its own
    predictions, and adds per-example columns: ``generated_correct`` (exact match),
    ``generated_edit_distance``, ``generated_cer``, ``generated_wer``, ``generated_bleu``,
    ``generated_chrf``, ``generated_rouge_1``, ``generated_rouge_2``, ``generated_rouge_l``,
    ``exposure_gap`` (teacher-forced right but
    generated wrong: the decoder sees what it will not see at inference) and
    ``first_divergence`` (-1: none). The generated ids are stored as ``generated``
    (``Run.array("generated")``), their text in the hardest table, and corpus numbers in
    the ``generation`` table. Rank by any of them: ``run.hardest(by="generated_cer")``.

    ``"greedy"`` decodes the standard Keras encoder-decoder with teacher forcing: source
    input(s) plus a decoder input shifted right by a start token, in one compiled loop; a
    beam width ``k > 1`` decodes the same model by beam search, in one compiled loop too.
    A keras-hub ``Seq2SeqLM`` or ``CausalLM`` decodes through its own generate function
    (its sampler and stop token) and its text through its tokenizer; the prompt is cut out
    of each example: the decoder's start tokens for a ``Seq2SeqLM``, and for a
    ``CausalLM`` the tokens before the first counted label (a prompt the sample weight
    keeps out of the loss), at least the start token, or ``prompt_length`` tokens.

    Attributes:
        method: ``"greedy"`` (or ``1``), a beam width ``k > 1``, or a callable: a batch of
            the model's inputs (a dict, examples on axis 0) -> that batch's generated ids
            ``(B, T)``.
        max_length: Most tokens generated (default: the decoder input's length).
        start_id: Start token (default: the id every decoder input row begins with).
        end_id: End token (default: ``</s>``, ``<eos>`` or ``[END]`` in the target vocab;
            a keras-hub task's tokenizer's end token).
        prompt_length: keras-hub ``CausalLM``: tokens of each example fed as the prompt,
            the start token included (default: see above).
    """

    method: Any = "greedy"
    max_length: int | None = None
    start_id: int | None = None
    end_id: int | None = None
    prompt_length: int | None = None

    def __post_init__(self) -> None:
        if self.prompt_length is not None and self.prompt_length < 1:
            raise ValueError(
                f"GenerationAnalysis(prompt_length={self.prompt_length}): the prompt holds at "
                "least the start token; pass an integer >= 1, or None."
            )
        method = self.method
        if isinstance(method, bool) or not (
            method == "greedy" or callable(method) or isinstance(method, int) and method >= 1
        ):
            raise ValueError(
                f"GenerationAnalysis(method={method!r}): pass 'greedy', a beam width (an "
                "integer >= 1) or a function (inputs batch -> (B, T) generated ids)."
            )
        if method == 1:
            object.__setattr__(self, "method", "greedy")

    @property
    def beam_width(self) -> int:
        """Beams kept at each step: 1 for greedy decoding and for a callable."""
        return self.method if isinstance(self.method, int) else 1


def generation_option(generate: Any) -> GenerationAnalysis | None:
    """The ``generate=`` argument of ``compute_losses`` / ``analyze`` as an option.

    ``None``, ``False`` or ``"none"``: no decoding; ``True`` or ``"greedy"``: greedy; an
    integer: that beam width (1 is greedy); a callable: the user's decoder; a
    :class:`GenerationAnalysis` as it is.

    Example:
        >>> generation_option(4).beam_width
        4
        >>> generation_option("none") is None
        True

    Raises:
        ValueError: For anything else, naming what is accepted.
    """
    if generate is None or generate is False or generate == "none":
        return None
    if isinstance(generate, GenerationAnalysis):
        return generate
    if generate is True:
        return GenerationAnalysis()
    if isinstance(generate, str) and generate.isdigit():
        generate = int(generate)
    return GenerationAnalysis(method=generate)


Analysis = AttentionAnalysis | EmbeddingAnalysis | FeatureAnalysis | DataHealth | GenerationAnalysis
_BY_NAME = {
    "attention": AttentionAnalysis,
    "embeddings": EmbeddingAnalysis,
    "features": FeatureAnalysis,
    "health": DataHealth,
    "generate": GenerationAnalysis,
}


def resolve_analyses(analyses: Iterable[Analysis | str]) -> dict[type, Analysis]:
    """Analyses by type; their names (``"attention"``, ``"generate"``...) are allowed too.

    Raises:
        ValueError: For an unknown name or object, or the same analysis twice.
    """
    found: dict[type, Analysis] = {}
    for item in analyses:
        if isinstance(item, str):
            if item not in _BY_NAME:
                raise ValueError(f"Unknown analysis {item!r}: choose from {sorted(_BY_NAME)}.")
            item = _BY_NAME[item]()
        if not isinstance(item, Analysis):
            raise ValueError(
                f"analyses holds {item!r}: pass AttentionAnalysis(), EmbeddingAnalysis(), "
                "FeatureAnalysis(), DataHealth(), GenerationAnalysis() or their names."
            )
        if type(item) in found:
            raise ValueError(f"{type(item).__name__} is given twice in analyses.")
        found[type(item)] = item
    return found
