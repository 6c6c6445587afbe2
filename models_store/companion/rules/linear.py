"""Gemm, MatMul and Einsum. Weight gradients are never requested (weights are constants); the rules
still give the second operand's gradient when it depends on the input (attention-like MatMul)."""

from __future__ import annotations

from models_store.errors import UnsupportedModel

from ..context import RuleContext, Shape, broadcast_shape, vjp


@vjp("Gemm")
def gemm(ctx: RuleContext) -> list[str | None]:
    """Y = alpha op(A) op(B) + beta C."""
    g = ctx.grad_out(0)
    a, b = ctx.x(0), ctx.x(1)
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    grads: list[str | None] = [None, None, None]
    if ctx.needs(0):
        # d op(A) = alpha g op(B)^T; op(B)^T is B when transB = 1, else B^T.
        if not trans_a:
            grads[0] = ctx.emit("Gemm", g, b, alpha=alpha, transB=1 - trans_b)
        else:  # dA = (d op(A))^T = alpha op(B) g^T
            grads[0] = ctx.emit("Gemm", b, g, alpha=alpha, transA=trans_b, transB=1)
    if ctx.needs(1):
        # d op(B) = alpha op(A)^T g
        if not trans_b:
            grads[1] = ctx.emit("Gemm", a, g, alpha=alpha, transA=1 - trans_a)
        else:  # dB = alpha g^T op(A)
            grads[1] = ctx.emit("Gemm", g, a, alpha=alpha, transA=1, transB=trans_a)
    if ctx.needs(2):
        beta = float(ctx.attr("beta", 1.0))
        gc = g if beta == 1.0 else ctx.emit("Mul", g, ctx.scalar(beta))
        grads[2] = ctx.unbroadcast(gc, ctx.shape(ctx.y(0)), ctx.x(2))
    return grads


def _swap_last(ctx: RuleContext, t: str, rank: int) -> str:
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.emit("Transpose", t, perm=perm)


@vjp("MatMul")
def matmul(ctx: RuleContext) -> list[str | None]:
    """numpy matmul semantics: batch dims broadcast, 1-D operands promoted then squeezed."""
    g = ctx.grad_out(0)
    a, b = ctx.x(0), ctx.x(1)
    sa, sb = ctx.shape(a), ctx.shape(b)
    # Promote 1-D operands so that both are (..., n, k) @ (..., k, m).
    sa2: Shape
    sb2: Shape
    if len(sa) == 1:
        a2, sa2 = ctx.unsqueeze(a, [0]), (1, *sa)
        g = ctx.unsqueeze(g, [-2 if len(sb) > 1 else 0])
    else:
        a2, sa2 = a, sa
    if len(sb) == 1:
        b2, sb2 = ctx.unsqueeze(b, [1]), (*sb, 1)
        g = ctx.unsqueeze(g, [-1])
    else:
        b2, sb2 = b, sb
    batch = broadcast_shape(sa2[:-2], sb2[:-2])
    grads: list[str | None] = [None, None]
    if ctx.needs(0):
        da = ctx.emit("MatMul", g, _swap_last(ctx, b2, len(sb2)))
        da = ctx.unbroadcast(da, (*batch, *sa2[-2:]), a2) if len(sa) > 1 else da
        if len(sa) == 1:
            da = ctx.reduce_sum(da, list(range(len(batch) + 1)), keepdims=False)
        grads[0] = da
    if ctx.needs(1):
        db = ctx.emit("MatMul", _swap_last(ctx, a2, len(sa2)), g)
        db = ctx.unbroadcast(db, (*batch, *sb2[-2:]), b2) if len(sb) > 1 else db
        if len(sb) == 1:
            axes = [*range(len(batch)), len(batch) + 1]
            db = ctx.reduce_sum(db, axes, keepdims=False)
        grads[1] = db
    return grads


def _einsum_terms(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Operand subscripts and the output's, the implicit form made explicit."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise UnsupportedModel(f"Einsum equation {equation!r} does not match {n_inputs} operands")
    if not arrow:  # implicit: the letters that occur once, alphabetically
        letters = "".join(terms).replace(".", "")
        rhs = ("..." if "..." in lhs else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1)
        )
    return terms, rhs


@vjp("Einsum")
def einsum(ctx: RuleContext) -> list[str | None]:
    """dA = einsum("out, others -> A", g, others...): an operand's gradient contracts the
    output gradient with every other operand. Needs each of A's letters in the output or in
    another operand, and no letter twice in A (a diagonal); broadcasting ellipses only when
    every operand's ellipsis has the output's shape."""
    equation = ctx.attr("equation")
    n = ctx.n_inputs()
    terms, out = _einsum_terms(equation, n)
    g = ctx.grad_out(0)
    grads: list[str | None] = []
    for i, term in enumerate(terms):
        if not ctx.needs(i):
            grads.append(None)
            continue
        letters = term.replace("...", "")
        others = [t for j, t in enumerate(terms) if j != i]
        elsewhere = set(out.replace("...", "")) | set("".join(others).replace("...", ""))
        if len(set(letters)) != len(letters) or not set(letters) <= elsewhere:
            raise UnsupportedModel(
                f"Einsum {ctx.node.name!r} ({equation!r}): operand {i} has a repeated or "
                "summed-only subscript; no gradient rule"
            )
        if "..." in term and _ellipsis_broadcasts(ctx, terms, out):
            raise UnsupportedModel(
                f"Einsum {ctx.node.name!r} ({equation!r}): broadcasting ellipsis; no gradient rule"
            )
        inputs = [g, *[ctx.x(j) for j in range(n) if j != i]]
        grads.append(ctx.emit("Einsum", *inputs, equation=f"{','.join([out, *others])}->{term}"))
    return grads


def _ellipsis_broadcasts(ctx: RuleContext, terms: list[str], out: str) -> bool:
    """True unless every operand's ellipsis dims equal the output's (then no unbroadcast)."""
    out_shape = ctx.shape(ctx.y(0))
    width = len(out_shape) - len(out.replace("...", ""))
    lead = out.index("...") if "..." in out else 0
    expected = out_shape[lead : lead + width]
    for j, term in enumerate(terms):
        if "..." not in term:
            continue
        shape = ctx.shape(ctx.x(j))
        start = term.index("...")
        mine = shape[start : start + len(shape) - len(term.replace("...", ""))]
        if tuple(mine) != tuple(expected):
            return True
    return False
