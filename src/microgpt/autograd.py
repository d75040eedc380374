"""Chapter 3: autograd on scalars.

A `Value` holds one number (`data`) and the derivative of the final loss with respect to it
(`grad`). Every operation returns a new Value that remembers its operands and the local
derivative with respect to each; `backward()` walks that record in reverse and applies the
chain rule. Standard library only.

Exports: `Value`, `topological_order`.
"""

from __future__ import annotations

import math

Number = int | float


class Value:
    """Stores a single scalar value and its gradient."""

    __slots__ = ("data", "grad", "_children", "_local_grads", "_op")

    def __init__(self, data: Number, children: tuple = (), local_grads: tuple = (), op: str = "") -> None:
        self.data = data
        self.grad = 0
        self._children = children  # the operands this value was computed from
        self._local_grads = local_grads  # d(this) / d(operand), one per operand
        self._op = op  # only for showing the graph

    # Each operation sits next to its derivative.

    def __add__(self, other: Value | Number) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1), "+")

    def __mul__(self, other: Value | Number) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data), "*")

    def __pow__(self, k: Number) -> Value:
        # Only number exponents: d(a^k)/da = k * a^(k-1).
        if isinstance(k, Value):
            raise TypeError("Value ** Value is not supported: the exponent must be a number")
        return Value(self.data ** k, (self,), (k * self.data ** (k - 1),), f"**{k}")

    def log(self) -> Value:
        return Value(math.log(self.data), (self,), (1 / self.data,), "log")

    def exp(self) -> Value:
        return Value(math.exp(self.data), (self,), (math.exp(self.data),), "exp")

    def relu(self) -> Value:
        return Value(max(0, self.data), (self,), (float(self.data > 0),), "relu")

    # The rest is built from the operations above, so it needs no derivative of its own.

    def __neg__(self) -> Value:
        return self * -1

    def __radd__(self, other: Number) -> Value:
        return self + other

    def __sub__(self, other: Value | Number) -> Value:
        return self + (-other)

    def __rsub__(self, other: Number) -> Value:
        return other + (-self)

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __truediv__(self, other: Value | Number) -> Value:
        # a / b is a * b^-1, so division reuses the derivatives of * and **.
        return self * other ** -1

    def __rtruediv__(self, other: Number) -> Value:
        return other * self ** -1

    def __repr__(self) -> str:
        return f"Value(data={self.data}, grad={self.grad})"

    def backward(self) -> None:
        """Set every ancestor's grad to d(self)/d(ancestor), accumulating with +=.

        Gradients flow in reverse topological order: a value's grad is complete before it
        is passed on to its operands. Call it once per graph (as training does): the
        intermediate values' gradients are not reset between calls.
        """
        self.grad = 1
        for v in reversed(topological_order(self)):
            for child, local_grad in zip(v._children, v._local_grads):
                child.grad += local_grad * v.grad


def topological_order(root: Value) -> list[Value]:
    """Every Value the graph below `root` holds, each after its operands (a depth-first post-order).

    Operands are visited left to right and each node once, the order that reproduces the
    original program's gradients bit for bit (SPEC 9). An explicit stack instead of recursion
    keeps graphs of any depth clear of Python's recursion limit.
    """
    order = []
    visited = {root}
    stack = [(root, iter(root._children))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in visited:
                visited.add(child)
                stack.append((child, iter(child._children)))
                break
        else:
            stack.pop()
            order.append(node)
    return order
