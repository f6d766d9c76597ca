"""The options of a run as two frozen dataclasses, checked once: what to load and how to analyse it.

* :class:`ModelSpec`: the model and how to load it (source, backend, device, taps, channel axes, output,
  display name, and a backend's own options such as the ONNX backend's ``parity_tolerance``);
* :class:`RunOptions`: the method and the engine (rule, selector and their parameters or a preset,
  branching, lowest tap, engine, batch size, statistics store, progress bar).

Both check their values in ``__post_init__`` (one-line :class:`~ssa.errors.InvalidInputError` that
names the parameter) and work with :func:`dataclasses.replace`, which checks again. What needs an
installed plugin or the model itself (is the rule registered? is ``stop_at`` a tap? is there a GPU?)
is checked where the plugin or the model is at hand. :class:`ModelOption` describes a command-line
model option that a backend registers (``ssa_register_model_options``); its value lands in
:attr:`ModelSpec.options`.

They are the one definition of the options: their fields hold the names, the defaults (the keywords of
:func:`ssa.analyse`, :func:`ssa.analyse_many` and :class:`ssa.Session` are these, with the same defaults;
``tests/test_one_definition.py`` keeps them so), the checks (here, once) and the ``--help`` texts (field
metadata). The command line adds its options from the fields (:func:`ssa.cli.commands.common.add_option_args`)
and builds these from its arguments (:func:`~ssa.cli.commands.common.model_spec` and
:func:`~ssa.cli.commands.common.run_options`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from ssa.core.checks import check_int, first_repeated
from ssa.core.defaults import DEFAULT_RULE, DEFAULT_SELECTOR, PRESETS, resolve_method
from ssa.core.interfaces import Rule, Selector
from ssa.errors import InvalidInputError

__all__ = ["ModelSpec", "RunOptions", "Method", "ModelOption", "ENGINES", "STORE_MODES", "TOKEN_MODES", "option_fields",
           "option_flag",
           "option_defaults", "option_values"]

#: "auto": the exact closed form where a step has one, autograd elsewhere; "fast": the same, refused when no
#: step has it; "autograd": every step by autograd
ENGINES = ("auto", "fast", "autograd")
#: the neurons of a token tap (vision transformers; method doc, section 4b): "all" aggregates every token as
#: positions are aggregated; "cls": the taps that carry a class token take it alone
TOKEN_MODES = ("all", "cls")
#: "fill": collect into the store what it lacks; "read": use the store only when it holds this model and images
STORE_MODES = ("fill", "read")

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


def _option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A field of an options dataclass: its default, its ``--help`` text, and how the command line spells it.

    ``cli`` (read by :func:`ssa.cli.commands.common.add_option_args`): ``flag`` (default ``--name-with-dashes``),
    ``short`` (e.g. ``-b``), ``None`` for ``flag`` when the command line has no such option, and any
    other ``argparse.add_argument`` keyword (``type``, ``choices``, ``action``, ``metavar``).
    """
    return field(default=default, metadata={"help": help, "cli": cli})


def option_fields(cls: type) -> dict[str, Field[Any]]:
    """The option fields of :class:`ModelSpec` or :class:`RunOptions` (those ``__init__`` takes), by name."""
    return {f.name: f for f in fields(cls) if f.init}


def option_flag(f: Field[Any]) -> str | None:
    """The command-line spelling of an option field (``--stop-at``; ``model`` for the positional source), or
    None when the command line has no such option."""
    cli = f.metadata.get("cli", {})
    return cli["flag"] if "flag" in cli else "--" + f.name.replace("_", "-")


def option_defaults(cls: type) -> dict[str, Any]:
    """``{name: default}`` of the option fields that have a default."""
    return {n: f.default for n, f in option_fields(cls).items() if f.default is not MISSING}


def option_values(obj: Any) -> dict[str, Any]:
    """``{name: value}`` of an options object's option fields."""
    return {n: getattr(obj, n) for n in option_fields(type(obj))}


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidInputError(f"{name} must be a non-empty string or None, got {value!r}.")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}.")
    return value


def _str_mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be a mapping of names to values, got {value!r}.")
    for key in value:
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{name} must have non-empty string keys, got {key!r}.")
    return dict(value)


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how (method doc, section 3: taps and channel axes).

    Parameters
    ----------
    source : what :func:`ssa.load_model` accepts: an ``nn.Module``, a model file, ``file.py:attr``,
        ``package.module:attr``, ``"digits"``, or a loaded :class:`~ssa.core.interfaces.Network`.
    backend : a registered backend's name (``ssa plugins``); None picks the first that can load ``source``.
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (whether the GPU exists is checked on loading).
    taps : tap names chosen by hand (a tuple; any sequence of names is accepted); None: the backend's default.
    include_input : add the input image's channels as the lowest tap.
    channel_axes : tap name -> its channel axis, overriding the backend's guess.
    tokens : ``"all"`` (default): a token tap's tokens are aggregated as positions are; ``"cls"``: the taps that
        carry a class token (ViT, DeiT) take it alone (refused for a model without one).
    output_index : which model output holds the logits (several outputs).
    name : the model's display name in graphs and summaries (None: the backend's choice).
    options : a backend's own options (e.g. ``{"parity_tolerance": 0.01}`` for ONNX files), passed to its
        ``load`` as keywords; they must not repeat the fields above.
    """

    source: Any = _option(MISSING, "the model: a file (see `ssa plugins` for the backends and what they load), "
                                   "path/file.py:attr, package.module:attr, or 'digits'", flag="model")
    backend: str | None = _option(None, "force a backend (see `ssa plugins`)")
    device: str = _option("cpu", "cpu (default), cuda, cuda:N")
    taps: Sequence[str] | None = _option(None, "comma-separated tap names to use instead of the default taps")
    include_input: bool = _option(False, "add the input image's channels as the last tap", action="store_true")
    channel_axes: Mapping[str, int] | None = _option(None, "override the channel axis of a tap (repeatable)",
                                                     flag="--channel-axis", action="append", metavar="TAP=AXIS")
    tokens: str = _option("all", "the neurons of a token tap (vision transformers): 'all' (default) averages every "
                                 "token, as positions are; 'cls' takes the class token alone", choices=TOKEN_MODES)
    output_index: int | None = _option(None, "which model output holds the logits", type=int)
    name: str | None = _option(None, "the model's display name in graphs and summaries (default: the built-in name "
                                     "for a built-in model's weights, else the class name or file stem; graphs "
                                     "identify models by content hash)")
    options: Mapping[str, Any] = field(default_factory=dict, metadata={
        "help": "a backend's own options (each backend's flags, ssa_register_model_options)", "cli": {"flag": None}})

    def __post_init__(self) -> None:
        if self.source is None:
            raise InvalidInputError("source must name a model (a file, 'file.py:attr', 'package.module:attr', "
                                    "'digits' or a model object), got None.")
        _optional_str("backend", self.backend)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")
        if self.taps is not None:
            if isinstance(self.taps, str) or not isinstance(self.taps, Sequence):
                raise InvalidInputError(f"taps must be a sequence of tap names (e.g. ('conv1', 'fc1')), got "
                                        f"{self.taps!r}.")
            taps = tuple(self.taps)
            if not taps or not all(isinstance(t, str) and t for t in taps):
                raise InvalidInputError(f"taps must name at least one tap, each a non-empty string, got {self.taps!r}.")
            twice = first_repeated(taps)
            if twice is not None:  # a typo, most likely; before, the second was dropped without a word
                raise InvalidInputError(f"taps lists {twice!r} twice, got {','.join(taps)!r}; list each tap once.")
            object.__setattr__(self, "taps", taps)
        _bool("include_input", self.include_input)
        if self.channel_axes is not None:
            axes = _str_mapping("channel_axes", self.channel_axes)
            for tap, axis in axes.items():
                if isinstance(axis, bool) or not isinstance(axis, int):
                    raise InvalidInputError(f"channel_axes[{tap!r}] must be an integer axis, got {axis!r}.")
            object.__setattr__(self, "channel_axes", axes)
        if self.tokens not in TOKEN_MODES:
            raise InvalidInputError(f"tokens must be one of {', '.join(TOKEN_MODES)}, got {self.tokens!r}.")
        if self.output_index is not None:
            check_int("output_index", self.output_index, 0)
        _optional_str("name", self.name)
        options = _str_mapping("options", self.options)
        clash = sorted(set(options) & _MODEL_FIELDS)
        if clash:
            raise InvalidInputError(f"options must hold only a backend's own options; {clash[0]!r} is a field of "
                                    f"ModelSpec: pass {clash[0]}= instead.")
        object.__setattr__(self, "options", options)

    @classmethod
    def from_keywords(cls, source: Any, **keywords: Any) -> ModelSpec:
        """The spec of :func:`ssa.load_model`'s keywords: the fields by name, the rest a backend's own
        :attr:`options`."""
        own = {k: v for k, v in keywords.items() if k not in _MODEL_FIELDS}
        return cls(source, **{k: v for k, v in keywords.items() if k in _MODEL_FIELDS}, options=own)

    def load_options(self) -> dict[str, Any]:
        """The keyword options a backend's ``load(source, device=..., **options)`` takes (``name`` only when set,
        ``tokens`` only when not ``"all"``)."""
        out: dict[str, Any] = {"taps": list(self.taps) if self.taps is not None else None,
                               "include_input": self.include_input,
                               "channel_axes": dict(self.channel_axes) if self.channel_axes is not None else None,
                               "output_index": self.output_index}
        if self.name is not None:
            out["name"] = self.name
        if self.tokens != "all":  # only then: a backend without token taps need not know the option
            out["tokens"] = self.tokens
        out.update(self.options)
        return out


_MODEL_FIELDS = frozenset(f.name for f in fields(ModelSpec))


@dataclass(frozen=True)
class Method:
    """The rule and the selector a run uses, with their parameters, after the preset and the defaults."""

    rule: str | Rule
    rule_params: Mapping[str, Any]
    selector: str | Selector
    selector_params: Mapping[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """How to analyse: the method (paper, Algorithm 1) and the engine (method doc, section 6).

    Parameters
    ----------
    rule, selector : registered names (``ssa plugins``) or configured instances; None: the defaults
        (:mod:`ssa.core.defaults`), or the preset's.
    rule_params, selector_params : their keyword parameters.
    preset : ``"paper"`` fixes the rule, the selector and their parameters; giving any of them beside it
        is refused.
    branching : b, the lower neurons kept per upper neuron and parent tap (>= 1).
    stop_at : the lowest tap to expand down to (None: down to the lowest tap).
    engine : one of :data:`ENGINES`.
    fast_math : on CUDA, allow TF32 in matrix products and convolutions (faster; graphs may differ from the
        exact run's, and a statistics store is neither read nor filled); no effect on the CPU.
    batch_size : images per forward pass (>= 1); None: by the device (32 on the CPU, 128 on a GPU).
    store : a statistics store folder (``ssa collect``), or None to work in memory.
    store_mode : one of :data:`STORE_MODES`.
    progress : show progress bars.

    :attr:`method` is the resolved rule and selector (preset, values given, defaults).
    """

    rule: str | Rule | None = _option(None, f"relevance rule (default {DEFAULT_RULE}; see `ssa plugins` and "
                                            "README, 'Which strategy?')")
    rule_params: Mapping[str, Any] | None = _option(None, "rule parameter (repeatable)", flag="--rule-param",
                                             action="append", metavar="NAME=VALUE")
    selector: str | Selector | None = _option(None, f"outlier selector (default {DEFAULT_SELECTOR}; see `ssa plugins`)")
    selector_params: Mapping[str, Any] | None = _option(
        None, "selector parameter, e.g. k=3 or two_sided=true (repeatable)", flag="--selector-param",
        action="append", metavar="NAME=VALUE")
    preset: str | None = _option(None, "paper: the paper's exact configuration (rule gradient, Tukey k=1.5, positive "
                                       "outliers only); replaces --rule, --selector and their parameters",
                                 choices=tuple(sorted(PRESETS)))
    branching: int = _option(3, "neurons kept per upper neuron (default 3)", short="-b", type=int)
    stop_at: str | None = _option(None, "lowest tap to expand down to")
    engine: str = _option("auto", "auto (default): exact closed form where a step has one, autograd elsewhere; "
                                  "fast: the same, refused when no step has it; autograd: every step by autograd",
                          choices=ENGINES)
    fast_math: bool = _option(False, "on CUDA, allow TF32 (10-bit mantissa) in matrix products and convolutions: a "
                                     "faster statistics pass, graphs that may differ from the exact ones (the GPU "
                                     "benchmark reports by how much; a statistics store is then neither read nor "
                                     "filled); no effect on the CPU; default: exact float32", action="store_true")
    batch_size: int | None = _option(None, "images per forward pass (default 32 on the CPU, 128 with --device cuda)",
                                     type=int)
    store: str | os.PathLike[str] | None = _option(
        None, "statistics store folder (default: $SSA_STORE or .ssa-store when it holds this model and image set; "
              "see `ssa collect`)")
    store_mode: str = _option("fill", "fill: collect into the store what it lacks; read: use the store only when "
                                      "it holds this model and images", flag=None)
    progress: bool = _option(False, "show progress bars", flag=None)
    method: Method = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rule is not None and not isinstance(self.rule, (str, Rule)):
            raise InvalidInputError(f"rule must be a registered rule's name or an ssa.Rule, got {self.rule!r}.")
        if self.selector is not None and not isinstance(self.selector, (str, Selector)):
            raise InvalidInputError(f"selector must be a registered selector's name or an ssa.Selector, got "
                                    f"{self.selector!r}.")
        object.__setattr__(self, "rule_params", _str_mapping("rule_params", self.rule_params))
        object.__setattr__(self, "selector_params", _str_mapping("selector_params", self.selector_params))
        _optional_str("preset", self.preset)
        rule, rule_params, selector, selector_params = resolve_method(
            self.preset, self.rule, self.rule_params, self.selector, self.selector_params)
        object.__setattr__(self, "method", Method(rule, rule_params, selector, selector_params))
        check_int("branching", self.branching, 1, "Pass --branching 1 or more.")
        _optional_str("stop_at", self.stop_at)
        if self.engine not in ENGINES:
            raise InvalidInputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}.")
        _bool("fast_math", self.fast_math)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1, "Pass --batch-size 1 or more.")
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise InvalidInputError(f"store must be a folder path or None, got {self.store!r}.")
        if self.store_mode not in STORE_MODES:
            raise InvalidInputError(f"store_mode must be 'fill' or 'read', got {self.store_mode!r}.")
        _bool("progress", self.progress)


@dataclass(frozen=True)
class ModelOption:
    """A command-line model option a backend registers (hook ``ssa_register_model_options``).

    Parameters
    ----------
    flag : the option, ``--lower-case-words``.
    option : the keyword the backend's ``load`` takes (lands in :attr:`ModelSpec.options`).
    backend : the registered name of the backend that takes it; the option is refused for other models.
    help : one line for ``--help``.
    type : converts the text given (``float``, ``int``, ``str`` or your own; raise ``ValueError`` on bad text).
        None makes a switch (no value; True when given).
    metavar : the value's name in ``--help``.
    models : what it applies to, for messages (default "<backend> models").
    """

    flag: str
    option: str
    backend: str
    help: str
    type: Callable[[str], Any] | None = str
    metavar: str | None = None
    models: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.flag, str) or not _FLAG.fullmatch(self.flag):
            raise InvalidInputError(f"flag must look like --lower-case-words, got {self.flag!r}.")
        if not isinstance(self.option, str) or not _IDENTIFIER.fullmatch(self.option) or self.option in _MODEL_FIELDS:
            raise InvalidInputError(f"option must be a Python identifier that is not a ModelSpec field, got "
                                    f"{self.option!r}.")
        if not isinstance(self.backend, str) or not self.backend:
            raise InvalidInputError(f"backend must be a backend's registered name, got {self.backend!r}.")
        if not isinstance(self.help, str) or not self.help.strip():
            raise InvalidInputError(f"help must be a non-empty string, got {self.help!r}.")
        if self.type is not None and not callable(self.type):
            raise InvalidInputError(f"type must be callable (e.g. float) or None, got {self.type!r}.")
        if not self.models:
            object.__setattr__(self, "models", f"{self.backend} models")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value (None when not given)."""
        return "model_option_" + self.option
