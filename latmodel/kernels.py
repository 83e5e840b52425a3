"""Kernel formation: which ops a backend runs as one launch (nn-Meter's split of the problem).

The rules are data in the hardware profile (FusionRule). A fused kernel reads only the
activations that come from outside it and writes only those read outside it: the intermediate
tensors stay in registers or on-chip memory, which is where fusion saves time.
"""
from __future__ import annotations

from dataclasses import dataclass

from autovit.latmodel.costs import CATEGORIES, OpCost
from autovit.latmodel.graph import OpGraph
from autovit.latmodel.hardware import FusionRule, HardwareProfile

# Which op decides a fused kernel's category: the first present in this order.
_CATEGORY_PRIORITY = ("attention", "conv", "dwconv", "linear", "norm", "pooling", "activation",
                      "elementwise", "other", "layout")


@dataclass
class Kernel:
    """One launch: ops fused by the profile's rules, priced at the graph's batch size."""

    name: str
    ops: list[str]
    op_types: list[str]
    category: str
    klass: str  # matrix | vector | layout | view
    flops: float
    in_elems: int  # activation elements read from outside the kernel
    out_elems: int  # activation elements written for readers outside the kernel
    w_elems: int
    work_elems: int
    gemm: tuple[int, int, int, int] | None
    batch_in: str
    act_shapes: list[tuple[int, ...]]
    unsupported: bool = False  # needs the profile's fallback engine
    transcendentals: int = 0
    runs: int = 0  # contiguous runs of strided copies (see costs.OpCost.runs)
    raw_runs: int = 0  # ... as onnxruntime's Transpose copies them (see costs.OpCost.raw_runs)
    rows: int = 0  # rows of last-axis reductions (see costs.OpCost.rows)
    moves_last_axis: bool = False  # contains a transpose that puts another axis last (see costs.OpCost)
    winograd_3x3: bool = False  # its main op is a Winograd-eligible convolution (see costs.OpCost)
    conv: tuple[int, int, int, int, int, int] | None = None  # its main op's convolution shape (see costs.OpCost)
    filter_shape: tuple[int, ...] = ()  # its main op's filter, input elements, im2col-free (see costs.OpCost)
    conv_in_elems: int = 0
    im2col_free: bool = False
    conv_cols: tuple[int, ...] = ()  # its main op's output walk (see costs.OpCost)
    exp_subnormal: int = 0  # a masked softmax's subnormal probabilities (see costs.OpCost)
    exp_zero: int = 0  # ... and those rounding to 0 through exp's subnormal range
    subnormal_reads: tuple[tuple[int, int], ...] = ()  # its GEMMs' subnormal left-operand elements (see costs.OpCost)
    # The activations it reads from outside itself (tensor name, elements at the graph's batch) and
    # the tensors it writes: which kernel wrote what another reads (timing's core_handoff).
    inputs: tuple[tuple[str, int], ...] = ()
    outputs: tuple[str, ...] = ()
    # Elements of a matrix product's output that a constant bias is added to (a Gemm with a C
    # input, or a MatMul and the Add of a constant fused with it): timing's gemm_bias_pass.
    bias_elems: int = 0


def _is_activation(g: OpGraph, name: str) -> bool:
    """Whether tensor `name` of `g` is an activation or a graph input (not a weight or a constant)."""
    t = g.tensors.get(name)
    return t is not None and t.kind in ("activation", "input")


def _selects(selector: str, cost: OpCost) -> bool:
    if selector.startswith("@"):
        return cost.category == selector[1:]
    return selector == cost.op_type


def _any(selectors: tuple[str, ...], cost: OpCost) -> bool:
    return any(_selects(s, cost) for s in selectors)


class _Former:
    def __init__(self, g: OpGraph, costs: dict[str, OpCost], profile: HardwareProfile):
        self.g, self.costs, self.profile = g, costs, profile
        self.assigned: dict[str, int] = {}
        self.consumers: dict[str, list[str]] = {}
        for name in g.order:
            for i in g.op(name).inputs:
                self.consumers.setdefault(i, []).append(name)
        self.producers = {o: n for n in g.order for o in g.op(n).outputs}
        self.graph_outputs = {o for o in self.producers if o not in self.consumers}
        self.position = {n: i for i, n in enumerate(g.order)}
        # The Neural Engine's activation epilogue is a mechanism the ablation can switch off.
        self.unary_on = profile.ane is None or profile.ane_uses("epilogue")

    def only_reader(self, op_name: str) -> str | None:
        """The single op reading `op_name`'s only output, if there is exactly one."""
        outs = self.g.op(op_name).outputs
        if len(outs) != 1 or outs[0] in self.graph_outputs:
            return None
        readers = self.consumers.get(outs[0], [])
        return readers[0] if len(readers) == 1 else None

    def _chain(self, start: str, rule: FusionRule) -> list[str]:
        ops = [start]
        cur = start
        tail = 0
        while tail < rule.max_tail:
            nxt = self.only_reader(cur)
            if nxt is not None and nxt not in self.assigned and _any(rule.tail, self.costs[nxt]):
                ops.append(nxt)
                cur = nxt
                tail += 1
                continue
            fn = self._unary_function(cur, rule, set(ops)) if rule.unary and self.unary_on else []
            if not fn:
                break
            ops += fn
            cur = fn[-1]
            tail += 1
        return ops

    def _unary_function(self, head: str, rule: FusionRule, taken: set[str]) -> list[str]:
        """Ops (in order, the last one producing the result) that compute a function of `head`'s
        only output and nothing else, e.g. x * sigmoid(x); [] if there is none within max_unary."""
        outs = self.g.op(head).outputs
        if len(outs) != 1 or outs[0] in self.graph_outputs:
            return []
        inside: set[str] = set()
        known = {outs[0]}
        queue = list(self.consumers.get(outs[0], []))
        while queue:
            n = queue.pop(0)
            if n in inside:
                continue
            acts = [i for i in self.g.op(n).inputs if _is_activation(self.g, i)]
            if (n in self.assigned or n in taken or not _any(rule.unary, self.costs[n])
                    or not all(i in known for i in acts)):
                continue
            inside.add(n)
            if len(inside) > rule.max_unary:
                return []
            known.update(self.g.op(n).outputs)
            queue += self.consumers.get(self.g.op(n).outputs[0], []) if self.g.op(n).outputs else []
        if not inside:
            return []
        # Exactly one result may leave the subgraph, and the head's output must not.
        leaving = [t for t in known if t in self.graph_outputs
                   or any(r not in inside for r in self.consumers.get(t, []))]
        if len(leaving) != 1 or leaving[0] == outs[0] or not self.g.op(head).outputs:
            return []
        return sorted(inside, key=self.position.__getitem__)

    def _scaled_operands(self, name: str) -> bool:
        """Both operands of `name` come from a Mul or Div: the ONNX signature of
        F.scaled_dot_product_attention (the exporter scales q and k^T by sqrt(scale) each). An attention
        written out in the model (q * scale @ k^T, softmax, @ v) scales one side or the product, and
        eager PyTorch runs it as separate kernels that write and re-read the scores."""
        prods = [self.producers.get(i) for i in self.g.op(name).inputs[:2]]
        return len(prods) == 2 and all(p is not None and self.costs[p].op_type in ("Mul", "Div") for p in prods)

    def _pattern(self, start: str, pattern: tuple[str, ...]) -> list[str]:
        ops: list[str] = []
        cur: str | None = start
        for step in pattern:
            optional = step.startswith("?")
            choices = tuple(step.lstrip("?").split("|"))
            if cur is not None and cur not in self.assigned and _any(choices, self.costs[cur]):
                ops.append(cur)
                cur = self.only_reader(cur)
            elif not optional:
                return []
        return ops

    def _prologue(self, ops: list[str], rule: FusionRule) -> list[str]:
        """Producers of the kernel's inputs that the kernel can read in place (no launch, no copy)."""
        absorbed: list[str] = []
        frontier = list(ops)
        for _ in range(2):  # at most two steps back, e.g. a Transpose then a scale Mul
            nxt = []
            for name in frontier:
                for i in self.g.op(name).inputs:
                    prod = self.producers.get(i)
                    if (prod and prod not in self.assigned and prod not in absorbed
                            and _any(rule.prologue, self.costs[prod])
                            and self.only_reader(prod) in ops + absorbed):
                        absorbed.append(prod)
                        nxt.append(prod)
            frontier = nxt
        return absorbed

    def form(self) -> list[tuple[list[str], FusionRule | None]]:
        """Kernels in execution order, each with the rule that formed it (None: a lone op)."""
        groups: list[tuple[list[str], FusionRule]] = []
        # Exact patterns first (most specific), then head/tail rules; ops in execution order.
        for rule in sorted(self.profile.fusion, key=lambda r: 0 if r.pattern else 1):
            for name in self.g.order:
                if name in self.assigned:
                    continue
                if rule.pattern:
                    ops = self._pattern(name, rule.pattern)
                    if ops and rule.scaled_operands and self.profile.uses("sdpa_call") and not self._scaled_operands(ops[0]):
                        continue
                    if ops and rule.self_gated and not set(self.g.op(ops[0]).inputs[:1]) & set(self.g.op(ops[-1]).inputs):
                        continue
                elif _any(rule.head, self.costs[name]):
                    ops = self._chain(name, rule)
                else:
                    continue
                if ops and rule.prologue:
                    ops = ops + self._prologue(ops, rule)
                if len(ops) < 2:
                    continue
                for o in ops:
                    self.assigned[o] = len(groups)
                groups.append((ops, rule))
        ordered: list[tuple[list[str], FusionRule | None]] = []
        emitted: set[int] = set()
        for name in self.g.order:
            gid = self.assigned.get(name)
            if gid is None:
                ordered.append(([name], None))
            elif gid not in emitted:
                emitted.add(gid)
                ops, rule = groups[gid]
                ordered.append((sorted(ops, key=self.position.__getitem__), rule))
        return ordered


def form_kernels(g: OpGraph, costs: dict[str, OpCost], profile: HardwareProfile) -> list[Kernel]:
    """Group the ops of `g` into kernels according to `profile`'s fusion rules."""
    former = _Former(g, costs, profile)
    unsupported = set(profile.fallback.unsupported_ops) if profile.fallback else set()
    kernels = [_merge(g, costs, ops, rule, former, unsupported) for ops, rule in former.form()]
    if profile.ane_uses("rank5") and profile.fallback is not None:
        # Core ML's "ND" layers (tensors of any rank) do not run on the Neural Engine
        # (hollance/neural-engine, unsupported layers): a copy through a rank-5+ tensor leaves it.
        for k in kernels:
            if k.klass == "layout" and any(len(s) >= 5 for s in k.act_shapes):
                k.unsupported = True
    return kernels


# Ops that only re-index a tensor: on the Neural Engine they cost nothing while whole rows stay rows.
_ROW_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Slice", "Split")


def _keeps_rows(g: OpGraph, name: str) -> bool:
    """Every output keeps the input's last axis: 64-byte-aligned rows are reinterpreted, not repacked."""
    op = g.op(name)
    src = g.tensors.get(op.inputs[0]) if op.inputs else None
    outs = [g.tensors.get(o) for o in op.outputs]
    if src is None or not src.shape or not outs:
        return False
    return all(t is not None and t.shape and t.shape[-1] == src.shape[-1] for t in outs)


def _klass_on(c: OpCost, former: "_Former") -> str:
    """A layout op is free where the backend only rewrites strides, a copy elsewhere.

    With `strided_readers` (PyTorch eager), a Transpose is only a new set of strides when every
    reader accepts strided input (BLAS, attention, slices, elementwise); the copy happens in the
    reshape that needs contiguous memory after it. On the Neural Engine (mechanism "layout") every
    buffer's last axis is a row padded to 64 bytes: a reshape, squeeze or slice that keeps the last
    axis only re-addresses rows, one that changes it repacks every row (a copy).
    """
    profile = former.profile
    if profile.ane_uses("layout") and c.op_type in _ROW_VIEWS:
        return "view" if _keeps_rows(former.g, c.name) else "layout"
    if profile.strided_readers:
        op = former.g.op(c.name)
        if c.op_type == "Transpose":
            readers = former.consumers.get(op.outputs[0], [])
            if readers and all(_any(profile.strided_readers, former.costs[r]) for r in readers):
                return "view"
            return "layout"
        if c.klass == "view" and op.inputs:
            prod = former.producers.get(op.inputs[0])
            if prod is not None and former.costs[prod].op_type == "Transpose":
                return "layout"
    if c.op_type in profile.elided:
        return "view"
    return "layout" if c.klass == "view" else c.klass


def _merge(g: OpGraph, costs: dict[str, OpCost], ops: list[str], rule: FusionRule | None,
           former: _Former, unsupported: set[str]) -> Kernel:
    cs = [costs[o] for o in ops]
    if len(ops) == 1:
        c = cs[0]
        acts = {i: g.tensors[i].numel for i in g.op(c.name).inputs if _is_activation(g, i)}
        return Kernel(c.name, [c.name], [c.op_type], c.category, _klass_on(c, former), c.flops,
                      c.in_elems, c.out_elems, c.w_elems, c.work_elems, c.gemm, c.batch_in, c.act_shapes,
                      c.op_type in unsupported, c.transcendentals, c.runs, c.raw_runs, c.rows, c.moves_last_axis, c.winograd_3x3, c.conv,
                      c.filter_shape, c.conv_in_elems, c.im2col_free, c.conv_cols, c.exp_subnormal, c.exp_zero,
                      c.subnormal_reads, tuple(acts.items()), tuple(g.op(c.name).outputs), _bias_elems(g, cs))
    inside = set(ops)
    produced = {o for n in ops for o in g.op(n).outputs}
    ext_in: dict[str, int] = {}
    ext_out: dict[str, int] = {}
    shapes = []
    for n in ops:
        for i in g.op(n).inputs:
            if _is_activation(g, i) and i not in produced:
                t = g.tensors[i]
                ext_in[i] = t.numel
                if t.shape:
                    shapes.append(t.shape)
        for o in g.op(n).outputs:
            readers = former.consumers.get(o, [])
            if o in former.graph_outputs or any(r not in inside for r in readers):
                t = g.tensors.get(o)
                ext_out[o] = t.numel if t is not None else 0
                if t is not None and t.shape:
                    shapes.append(t.shape)
    category = rule.category if rule is not None and rule.category in CATEGORIES else next(
        (cat for cat in _CATEGORY_PRIORITY if any(c.category == cat for c in cs)), "other")
    # The kernel runs on the engine of its heaviest op.
    main = max(cs, key=lambda c: (c.klass == "matrix", c.flops))
    klasses = [c.klass for c in cs] if not former.profile.ane_uses("layout") else [_klass_on(c, former) for c in cs]
    klass = "matrix" if "matrix" in klasses else (
        "vector" if "vector" in klasses else ("layout" if "layout" in klasses else "view"))
    return Kernel(
        name=main.name, ops=ops, op_types=[c.op_type for c in cs], category=category, klass=klass,
        flops=sum(c.flops for c in cs), in_elems=sum(ext_in.values()), out_elems=sum(ext_out.values()),
        w_elems=sum(c.w_elems for c in cs), work_elems=max(c.work_elems for c in cs), gemm=main.gemm,
        batch_in=main.batch_in, act_shapes=shapes, unsupported=any(c.op_type in unsupported for c in cs),
        transcendentals=sum(c.transcendentals for c in cs), runs=sum(c.runs for c in cs),
        raw_runs=sum(c.raw_runs for c in cs),
        rows=sum(c.rows for c in cs), moves_last_axis=any(c.moves_last_axis for c in cs), winograd_3x3=main.winograd_3x3,
        conv=main.conv, filter_shape=main.filter_shape, conv_in_elems=main.conv_in_elems, im2col_free=main.im2col_free,
        conv_cols=main.conv_cols, exp_subnormal=sum(c.exp_subnormal for c in cs), exp_zero=sum(c.exp_zero for c in cs),
        subnormal_reads=tuple(r for c in cs for r in c.subnormal_reads),
        inputs=tuple(ext_in.items()), outputs=tuple(ext_out), bias_elems=_bias_elems(g, cs),
    )


def _bias_elems(g: OpGraph, cs: list[OpCost]) -> int:
    """Output elements of the kernel's matrix product that a constant bias is added to: a Gemm's
    C input, or an Add of a constant (a weight, not an activation) after a MatMul or Gemm in the
    same kernel, where the product's right operand is a weight (a layer, not attention's product
    of two activations); 0 where there is none."""
    product = next((c for c in cs if c.op_type in ("Gemm", "MatMul") and c.w_elems > 0), None)
    if product is None:
        return 0
    for c in cs:
        op = g.op(c.name)
        if c.op_type == "Gemm" and len(op.inputs) > 2 and op.inputs[2] and not _is_activation(g, op.inputs[2]):
            return c.out_elems
        if c.op_type == "Add" and any(i in g.tensors and not _is_activation(g, i) for i in op.inputs):
            return product.out_elems
    return 0
