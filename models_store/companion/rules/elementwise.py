"""Broadcasting arithmetic. Rules return gradients in the output's shape; the engine sums them
down to each operand's shape (``broadcast=True``)."""

from __future__ import annotations

from ..context import RuleContext, vjp


@vjp("Add", "Sum", broadcast=True)
def add(ctx: RuleContext) -> list[str | None]:
    return [ctx.grad_out(0)] * ctx.n_inputs()


@vjp("Sub", broadcast=True)
def sub(ctx: RuleContext) -> list[str | None]:
    g = ctx.grad_out(0)
    return [g, ctx.emit("Neg", g) if ctx.needs(1) else None]


@vjp("Mul", broadcast=True)
def mul(ctx: RuleContext) -> list[str | None]:
    g = ctx.grad_out(0)
    silu = _silu(ctx)
    if silu is not None:
        return silu
    return [
        ctx.emit("Mul", g, ctx.x(1)) if ctx.needs(0) else None,
        ctx.emit("Mul", g, ctx.x(0)) if ctx.needs(1) else None,
    ]


def _silu(ctx: RuleContext) -> list[str | None] | None:
    """x * Sigmoid(x) (SiLU/Swish as exported) in one formula, s (1 + x (1 - s)), instead of
    two gradient paths, a Sigmoid backward and a fan-out Sum: four fewer passes over the
    activation per SiLU on efficientnet."""
    for i in (0, 1):
        x, s = ctx.x(i), ctx.x(1 - i)
        producer = ctx.producer(s)
        if (
            producer is not None
            and producer.op_type == "Sigmoid"
            and producer.input[0] == x
            and ctx.needs(i)
        ):
            inner = ctx.emit("Mul", x, ctx.emit("Sub", ctx.one, s))
            slope = ctx.emit("Mul", s, ctx.emit("Add", inner, ctx.one))
            grads: list[str | None] = [None, None]
            grads[i] = ctx.emit("Mul", ctx.grad_out(0), slope)
            return grads
    return None


@vjp("Div", broadcast=True)
def div(ctx: RuleContext) -> list[str | None]:
    g, b = ctx.grad_out(0), ctx.x(1)
    da = ctx.emit("Div", g, b)  # g / b; the rule runs only when some input needs a gradient
    db = None
    if ctx.needs(1):  # -g a / b^2 = -(g / b) * y
        db = ctx.emit("Neg", ctx.emit("Mul", da, ctx.y(0)))
    return [da if ctx.needs(0) else None, db]


@vjp("Expand", broadcast=True)
def expand(ctx: RuleContext) -> list[str | None]:
    return [ctx.grad_out(0), None]


@vjp("Where", broadcast=True)
def where(ctx: RuleContext) -> list[str | None]:
    g, cond = ctx.grad_out(0), ctx.x(0)
    return [
        None,
        ctx.emit("Where", cond, g, ctx.zero) if ctx.needs(1) else None,
        ctx.emit("Where", cond, ctx.zero, g) if ctx.needs(2) else None,
    ]


@vjp("Max", "Min", broadcast=True)
def max_min(ctx: RuleContext) -> list[str | None]:
    # The gradient goes to the operand(s) equal to the result (ties split evenly).
    g, y = ctx.grad_out(0), ctx.y(0)
    hits = [ctx.mask(ctx.emit("Equal", ctx.x(i), y)) for i in range(ctx.n_inputs())]
    count = hits[0] if len(hits) == 1 else ctx.emit("Sum", *hits)
    share = ctx.emit("Div", g, count)
    return [ctx.emit("Mul", h, share) if ctx.needs(i) else None for i, h in enumerate(hits)]


@vjp("Pow", broadcast=True)
def pow_(ctx: RuleContext) -> list[str | None]:
    g, base, exponent = ctx.grad_out(0), ctx.x(0), ctx.x(1)
    grads: list[str | None] = [None, None]
    if ctx.needs(0):  # e * x^(e-1)
        e = ctx.constant(exponent)
        if e is not None and e.size == 1 and float(e.reshape(-1)[0]) == 2.0:
            slope = ctx.emit("Mul", base, ctx.scalar(2.0))
        else:
            e_cast = ctx.cast(exponent)
            slope = ctx.emit("Mul", e_cast, ctx.emit("Pow", base, ctx.emit("Sub", e_cast, ctx.one)))
        grads[0] = ctx.emit("Mul", g, slope)
    if ctx.needs(1):  # y * ln(x)
        grads[1] = ctx.emit("Mul", g, ctx.emit("Mul", ctx.y(0), ctx.emit("Log", base)))
    return grads


@vjp("Neg")
def neg(ctx: RuleContext) -> list[str | None]:
    return [ctx.emit("Neg", ctx.grad_out(0))]


@vjp("Exp")
def exp(ctx: RuleContext) -> list[str | None]:
    return [ctx.emit("Mul", ctx.grad_out(0), ctx.y(0))]


@vjp("Log")
def log(ctx: RuleContext) -> list[str | None]:
    return [ctx.emit("Div", ctx.grad_out(0), ctx.x(0))]


@vjp("Sqrt")
def sqrt(ctx: RuleContext) -> list[str | None]:
    return [ctx.emit("Div", ctx.grad_out(0), ctx.emit("Mul", ctx.y(0), ctx.scalar(2.0)))]


@vjp("Reciprocal")
def reciprocal(ctx: RuleContext) -> list[str | None]:
    y = ctx.y(0)
    return [ctx.emit("Neg", ctx.emit("Mul", ctx.grad_out(0), ctx.emit("Mul", y, y)))]


@vjp("Abs")
def abs_(ctx: RuleContext) -> list[str | None]:
    return [ctx.emit("Mul", ctx.grad_out(0), ctx.emit("Sign", ctx.x(0)))]
