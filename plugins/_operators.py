"""The operators a model file may call: Gauntlet's allow-list, as data.

Both archive checks (:mod:`gauntlet.plugins._torchscript` for TorchScript,
:mod:`gauntlet.plugins._torch_export` for ``.pt2``) admit a model only if every operator
it can reach is listed here, and report what they found as a :class:`GraphCheck`. A helper
of :mod:`gauntlet.plugins.torch_models`, not a plugin.

How the list was derived (torch 2.15, torchvision 0.29):

1. The union of the operators found in the built-in ``cnn`` and ``mlp`` and torchvision's
   ``resnet18``, ``mobilenet_v3_small`` and ``squeezenet1_1``, each scripted
   (``torch.jit.script``, every node kind of the inlined graph plus every name the
   serialized code references, including branches not taken), traced
   (``torch.jit.trace``) and exported (``torch.export.export``, the graph's targets);
   then checked against torchvision's other classifiers (alexnet, vgg11, googlenet,
   densenet121, shufflenet_v2, mnasnet, efficientnet_b0, regnet_x_400mf, convnext_tiny,
   inception_v3, vit_b_16, swin_t, maxvit_t), which added the fused attention kernel,
   the autocast query and the device-index property.
2. Plus these families, picked by name from ``torch._C._jit_get_all_schemas()`` (every
   name below is checked to be registered, or to be one of TorchScript's own builtin
   functions or special forms, by tests/plugins/test_intake_torchscript.py): convolutions,
   matmul/linear, activations, pooling, normalisation (batch/layer/group/instance/RMS norm,
   including the ``_native_batch_norm_legit*`` forms torch.export emits), elementwise
   maths, reductions, comparisons, shape/view/index/slice/cat ops, creation ops, dtype and
   device conversions, dropout, the softmax family, interpolation, padding, TorchScript's
   list/dict/str/int/float builtins, the grad-mode ops behind ``with torch.no_grad()``,
   and TorchScript's control-flow and container forms.
3. Minus anything that touches files, processes, threads, the network, the Python
   interpreter, printing or raw storage; see ``EXCLUDED`` for the named ones and why.

Everything not listed is refused, including every namespace other than ``aten``, ``prim``
and ``prims`` (custom operators are native code from some other library, e.g. ``ops.evil``
or ``ops.torchvision.nms``) and TorchScript custom classes (``__torch__.torch.classes``).
Refusing is cheap: a model that needs an operator missing here can be re-exported as
weights plus an architecture.
"""
from __future__ import annotations

import dataclasses
import functools

# Why the risky operators that a model file could otherwise reach are left out. The archive
# checks quote these reasons in their refusals.
EXCLUDED: dict[str, str] = {
    "aten::from_file": "maps a file on disk into a tensor, reading it or (shared=True) "
                       "writing it",
    "aten::save": "writes a file",
    "aten::_save": "writes a file",
    "aten::_save_for_mobile": "writes a file",
    "aten::load": "reads a file",
    "aten::_print": "prints",
    "prim::Print": "prints",
    "prim::fork": "starts work on another thread",
    "prim::awaitable": "defers work to be run later",
    "prim::awaitable_wait": "runs deferred work",
    "prim::awaitable_nowait": "runs deferred work",
    "aten::wait": "waits on another thread's work",
    "prim::PythonOp": "calls back into the Python interpreter",
    "prim::IgnoredPythonOp": "calls back into the Python interpreter",
    "prim::rpc_async": "talks to other processes over the network",
    "prim::rpc_sync": "talks to other processes over the network",
    "prim::rpc_remote": "talks to other processes over the network",
    "aten::to_here": "talks to other processes over the network",
    "prim::id": "reveals memory addresses",
    "aten::set_": "points a tensor at arbitrary storage",
    "aten::set": "points a tensor at arbitrary storage",
    "aten::set_data": "swaps a tensor's storage",
    "aten::as_strided": "views storage through arbitrary strides",
    "aten::as_strided_": "views storage through arbitrary strides",
    "aten::as_strided_scatter": "views storage through arbitrary strides",
    "aten::empty_strided": "views storage through arbitrary strides",
    "aten::new_empty_strided": "views storage through arbitrary strides",
    "aten::_reshape_alias": "views storage through arbitrary strides",
    "aten::_unsafe_view": "skips PyTorch's safety checks",
    "aten::_unsafe_index": "skips PyTorch's safety checks",
    "aten::_unsafe_index_put": "skips PyTorch's safety checks",
    "aten::unsafe_split": "skips PyTorch's safety checks",
    "aten::unsafe_chunk": "skips PyTorch's safety checks",
    "aten::_sparse_coo_tensor_unsafe": "builds sparse tensors without checking indices",
    "aten::storage_offset": "exposes raw storage layout",
    "aten::resize_": "reallocates storage in place",
    "aten::manual_seed": "changes the auditor's global random state",
    "aten::seed": "changes the auditor's global random state",
    "aten::set_num_threads": "changes the auditor's process settings",
    "aten::backward": "runs autograd on the auditor's tensors",
    "aten::grad": "runs autograd on the auditor's tensors",
    "aten::record_stream": "touches device streams",
}

# -- the allow-list, by family ------------------------------------------------------------
_CONVOLUTION = """
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution
    convolution _convolution_mode
"""
_LINEAR_ALGEBRA = """
    addbmm addmm addmv addr baddbmm bilinear bmm dot einsum inner kron linear matmul mm
    mv outer tensordot vdot
"""
_ACTIVATIONS = """
    celu celu_ elu elu_ gelu gelu_ glu hardshrink hardsigmoid hardsigmoid_ hardswish
    hardswish_ hardtanh hardtanh_ leaky_relu leaky_relu_ log_sigmoid logit mish mish_
    prelu _prelu_kernel relu relu6 relu6_ relu_ rrelu rrelu_ selu selu_ sigmoid sigmoid_
    silu silu_ softplus softshrink tanh tanh_ threshold threshold_
"""
_POOLING = """
    adaptive_avg_pool1d _adaptive_avg_pool2d adaptive_avg_pool2d _adaptive_avg_pool3d
    adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool1d_with_indices max_pool2d
    max_pool2d_with_indices max_pool3d max_pool3d_with_indices
"""
_NORMALISATION = """
    batch_norm _batch_norm_impl_index _batch_norm_no_update _batch_norm_with_update
    group_norm instance_norm layer_norm native_batch_norm _native_batch_norm_legit
    _native_batch_norm_legit_functional _native_batch_norm_legit_no_training
    native_group_norm native_layer_norm rms_norm
"""
_RECURRENT_AND_ATTENTION = """
    cosine_similarity embedding gru gru_cell lstm lstm_cell _native_multi_head_attention
    rnn_relu rnn_relu_cell rnn_tanh rnn_tanh_cell scaled_dot_product_attention
"""
_DROPOUT = """
    alpha_dropout alpha_dropout_ dropout dropout_ feature_alpha_dropout
    feature_alpha_dropout_ feature_dropout feature_dropout_ native_dropout
"""
_SOFTMAX = "_log_softmax _safe_softmax _softmax log_softmax logsumexp softmax"
_ELEMENTWISE = """
    abs abs_ absolute acos acosh add add_ addcdiv addcmul __and__ asin asinh atan atan2
    atanh bitwise_and bitwise_not bitwise_or bitwise_xor ceil ceil_ clamp clamp_
    clamp_max clamp_max_ clamp_min clamp_min_ clip clip_ copysign cos cosh deg2rad
    digamma div div_ divide erf erfc erfinv exp exp2 exp_ expm1 float_power floor floor_
    floor_divide floordiv fmax fmin fmod frac hypot i0 __iand__ __ilshift__ __ior__
    __irshift__ __ixor__ lerp lgamma log log10 log1p log2 log_ logaddexp logaddexp2
    logical_and logical_not logical_or logical_xor __lshift__ maximum minimum mul mul_
    multiply nan_to_num neg neg_ negative __or__ positive pow pow_ rad2deg reciprocal
    reciprocal_ remainder round round_ __rshift__ rsqrt rsub sgn sign sin sinc sinh sqrt
    sqrt_ square sub sub_ subtract tan true_divide trunc trunc_ xlogy __xor__
"""
_REDUCTIONS = """
    all amax amin aminmax any argmax argmin argsort count_nonzero cummax cummin cumprod
    cumsum frobenius_norm kthvalue linalg_vector_norm max mean median min mode nanmean
    nansum norm prod sort std std_mean sum topk var var_mean
"""
_COMPARISONS = """
    allclose eq eq_ equal ge ge_ greater greater_equal gt gt_ isclose isfinite isin
    isinf isnan isneginf isposinf le le_ less less_equal lt lt_ ne ne_ not_equal where
"""
_SHAPE_AND_INDEX = """
    alias argwhere broadcast_tensors broadcast_to cat channel_shuffle chunk clone col2im
    concat concatenate constant_pad_nd contiguous copy_ detach detach_ diag diag_embed
    diagonal dim dstack expand expand_as fill fill_ flatten flip gather __getitem__
    hstack im2col index index_add index_add_ index_copy index_fill index_fill_ index_put
    index_put_ index_select masked_fill masked_fill_ masked_scatter masked_select
    meshgrid moveaxis movedim narrow native_channel_shuffle nonzero numel one_hot pad
    _pad_circular _pad_enum permute pixel_shuffle pixel_unshuffle reflection_pad1d
    reflection_pad2d reflection_pad3d repeat repeat_interleave replication_pad1d
    replication_pad2d replication_pad3d reshape reshape_as roll scatter scatter_
    scatter_add scatter_add_ select select_scatter size slice slice_scatter split
    split_with_sizes squeeze squeeze_ stack stride swapaxes swapdims t t_ take
    take_along_dim tensor_split tile trace transpose transpose_ tril triu unbind
    unflatten unfold unsqueeze unsqueeze_ view view_as vstack zero_
"""
_INTERPOLATION = """
    affine_grid_generator grid_sampler grid_sampler_2d __interpolate __upsample
    upsample_bicubic2d _upsample_bicubic2d_aa __upsample_bilinear upsample_bilinear2d
    _upsample_bilinear2d_aa upsample_linear1d __upsample_nearest upsample_nearest1d
    upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d
    _upsample_nearest_exact2d _upsample_nearest_exact3d upsample_trilinear3d
"""
_CREATION = """
    arange as_tensor bernoulli bernoulli_ empty empty_like eye full full_like lift_fresh
    lift_fresh_copy linspace logspace new_empty new_full new_ones new_zeros normal
    normal_ ones ones_like rand rand_like randint randint_like randn randn_like randperm
    range scalar_tensor tensor uniform_ zeros zeros_like
"""
_CONVERSIONS = """
    Bool can_cast Complex ComplexImplicit cpu device element_size Float FloatImplicit
    get_device Int IntImplicit is_complex is_contiguous is_floating_point is_nonzero
    is_signed item _local_scalar_dense promote_types requires_grad_ result_type
    ScalarImplicit to _to_copy type_as
"""
# TorchScript's builtins for lists, dicts, strings and numbers (len, append, format, ...).
_CONTAINERS_AND_SCALARS = """
    append bin capitalize chr clear __contains__ copy count Delete __derive_index dict
    divmod endswith extend find format get hash hex index _infer_size insert __is__
    isalnum isalpha isdigit islower __isnot__ isspace isupper items join keys len list
    _list_to_tensor ljust lower lstrip mathremainder __not__ oct ord percentFormat pop
    popitem __range_length remove replace reverse rfind rjust __round_to_zero_floordiv
    rstrip _set_item setdefault sorted split splitlines startswith str strip swapcase
    _tensor_to_list title update upper values zfill
"""
# Reached by TorchScript's own torch.nn.functional code: with torch.no_grad() compiles to a
# class calling these two, and softmax without dim= warns through aten::warn (a message to
# Python's warnings machinery, nothing more).
_RUNTIME = """
    _assert_async _assert_scalar _assert_tensor_metadata _functional_assert_async
    _functional_assert_scalar is_autocast_enabled is_grad_enabled is_scripting
    set_grad_enabled sym_constrain_range sym_constrain_range_for_size sym_numel sym_size
    sym_stride warn
"""
# TorchScript's builtin functions (frontend/builtin_functions.cpp), not registered schemas.
_ATEN_BUILTIN_FUNCTIONS = "_pair _quadruple _single _triple"
_PRIM = """
    abs BroadcastSizes data device dtype EnumName EnumValue grad index is_cpu is_cuda
    is_meta is_mkldnn is_nested is_quantized is_sparse is_sparse_csr is_xpu itemsize
    layout max min ModuleContainerIndex name nbytes ndim NumToTensor RaiseException
    rangelist requires_grad StringIndex T tolist TupleIndex TupleUnpack type
    unchecked_cast unchecked_unwrap_optional Uninitialized
"""
# Statements and special forms of TorchScript (graph node kinds and what the compiler binds
# to range, zip, isinstance, getattr, ...), not registered operators.
_PRIM_FORMS = """
    annotate CallFunction CallMethod Constant CreateObject dict DictConstruct DictIndex
    Enter enumerate Exit GetAttr HasAttr If isinstance list ListConstruct ListUnpack
    Loop range Return SetAttr TupleConstruct TupleSlice zip
"""
# The primitives torch.export's decompositions may leave in a graph.
_PRIMS = """
    abs acos acosh add amax amin asin asinh atan atan2 atanh bitwise_and bitwise_not
    bitwise_or bitwise_xor broadcast_in_dim cat ceil clone collapse collapse_view
    convert_element_type cos cosh div eq erf exp exp2 expm1 fill floor fmax fmin fmod
    full full_like ge gt iota isfinite le log log10 log1p log2 lt maximum minimum mul ne
    neg pow prod reciprocal remainder reshape round rsqrt sign sin sinh split_dim sqrt
    squeeze sub sum tan tanh transpose trunc var view_of where
"""


def _qualify(namespace: str, *groups: str) -> frozenset[str]:
    return frozenset(f"{namespace}::{name}" for group in groups for name in group.split())


ALLOWED: frozenset[str] = (
    _qualify("aten", _CONVOLUTION, _LINEAR_ALGEBRA, _ACTIVATIONS, _POOLING, _NORMALISATION,
             _RECURRENT_AND_ATTENTION, _DROPOUT, _SOFTMAX, _ELEMENTWISE, _REDUCTIONS,
             _COMPARISONS, _SHAPE_AND_INDEX, _INTERPOLATION, _CREATION, _CONVERSIONS,
             _CONTAINERS_AND_SCALARS, _RUNTIME, _ATEN_BUILTIN_FUNCTIONS)
    | _qualify("prim", _PRIM, _PRIM_FORMS) | _qualify("prims", _PRIMS))

NAMESPACES = frozenset({"aten", "prim", "prims"})


def base_name(qualified_name: str) -> str:
    """``aten::add.Tensor`` -> ``aten::add``: the allow-list names operators, not overloads."""
    namespace, _, name = qualified_name.partition("::")
    return f"{namespace}::{name.split('.', 1)[0]}"


def is_allowed(qualified_name: str) -> bool:
    """Whether a model file may call this operator (any overload of it)."""
    return base_name(qualified_name) in ALLOWED


def why_refused(qualified_name: str) -> str:
    """A short reason, in the user's words, for refusing an operator."""
    name = base_name(qualified_name)
    if name in EXCLUDED:
        return EXCLUDED[name]
    namespace = name.partition("::")[0]
    if namespace not in NAMESPACES:
        return f"a custom operator from the {namespace!r} library, native code outside PyTorch"
    if name not in registered_operators():
        return "not a PyTorch operator"
    return "not on Gauntlet's operator allow-list"


@functools.cache
def registered_operators() -> frozenset[str]:
    """Every operator name this PyTorch knows (overloads folded), plus TorchScript's builtin
    functions: a method name that is one of these may resolve to the operator."""
    import torch

    names = {schema.name for schema in torch._C._jit_get_all_schemas()}
    return frozenset(names) | _qualify("aten", _ATEN_BUILTIN_FUNCTIONS) | _qualify("prim",
                                                                                 "ndim T")


# What TorchScript binds a bare name to when it compiles an archive's code: SourceImporter's
# environment (annotate, fork, ...) and the compiler's Python builtins (ir_emitter.cpp).
TORCHSCRIPT_BUILTINS: dict[str, str] = {
    "AssertionError": "prim::RaiseException", "_to_tensor": "prim::NumToTensor",
    "abs": "prim::abs", "all": "aten::all", "annotate": "prim::annotate", "any": "aten::any",
    "awaitable": "prim::awaitable", "bin": "aten::bin", "bool": "aten::Bool",
    "chr": "aten::chr", "complex": "aten::Complex", "dict": "prim::dict",
    "divmod": "aten::divmod", "enumerate": "prim::enumerate", "float": "aten::Float",
    "fork": "prim::fork", "getattr": "prim::GetAttr", "hasattr": "prim::HasAttr",
    "hash": "aten::hash", "hex": "aten::hex", "id": "prim::id", "int": "aten::Int",
    "isinstance": "prim::isinstance", "len": "aten::len", "list": "prim::list",
    "max": "prim::max", "min": "prim::min", "oct": "aten::oct", "ord": "aten::ord",
    "pow": "aten::pow", "print": "prim::Print", "range": "prim::range",
    "rangelist": "prim::rangelist", "round": "aten::round", "sorted": "aten::sorted",
    "str": "aten::str", "sum": "aten::sum", "tuple": "prim::TupleConstruct",
    "unchecked_cast": "prim::unchecked_cast", "uninitialized": "prim::Uninitialized",
    "zip": "prim::zip",
}


# -- what a check of a model archive (TorchScript or .pt2) found -----------------------
@dataclasses.dataclass
class GraphCheck:
    """What a model archive's code can call, and why (if) Gauntlet refuses it."""

    operators: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.refused and not self.problems


def note_operator(check: GraphCheck, op: str, where: str) -> None:
    check.operators[op] = check.operators.get(op, 0) + 1
    if not is_allowed(op):
        refuse(check, op, where)


def refuse(check: GraphCheck, what: str, where: str) -> None:
    if (what, where) not in check.refused:
        check.refused.append((what, where))
