r"""Reward rules on token sequences (host side): r(x, y) for a response y = (y_1, …, y_|y|).

- :func:`table_reward`: a table of responses with a default for the others.
- :func:`exact_match_reward`: ``correct`` if y is one of the demonstrations, else ``incorrect``.
- :func:`final_answer_reward`: a verifiable answer: ``correct`` if the final token before EOS is
  the answer (y = (…, answer, EOS)), else ``incorrect`` (a response cut at length T without EOS
  gives no answer).
- :func:`length_penalty_reward`: r(y) = base − per_token · |y| (|y| counts EOS).

Each returns a function tuple -> float that :func:`~nondecoupling.theory.tree.build.build_tree`
evaluates on every leaf.

References: THEORY.md part G; research/fusion-methods.md §0 (verifier rewards).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

__all__ = ["table_reward", "exact_match_reward", "final_answer_reward", "length_penalty_reward"]


def table_reward(table: Mapping[tuple, float], default: float = 0.0) -> Callable[[tuple], float]:
  """r(y) = table[y] for listed responses, ``default`` otherwise.

  Examples:
    >>> r = table_reward({(1, 0): 2.0}, default=-1.0)
    >>> r((1, 0)), r((0,))
    (2.0, -1.0)
  """
  table = {tuple(int(a) for a in y): float(v) for y, v in table.items()}
  return lambda y: table.get(tuple(y), float(default))


def exact_match_reward(demonstrations: Iterable[tuple], correct: float = 1.0,
                       incorrect: float = 0.0) -> Callable[[tuple], float]:
  """r(y) = ``correct`` if y equals one of the demonstrations, else ``incorrect``.

  Examples:
    >>> r = exact_match_reward([(2, 0)])
    >>> r((2, 0)), r((1, 0))
    (1.0, 0.0)
  """
  demos = {tuple(int(a) for a in y) for y in demonstrations}
  return lambda y: float(correct) if tuple(y) in demos else float(incorrect)


def final_answer_reward(answer: int, eos: int, correct: float = 1.0,
                        incorrect: float = 0.0) -> Callable[[tuple], float]:
  """r(y) = ``correct`` if y ends with (answer, EOS), else ``incorrect``.

  Examples:
    >>> r = final_answer_reward(answer=2, eos=0)
    >>> r((1, 2, 0)), r((2, 1, 0)), r((1, 2))
    (1.0, 0.0, 0.0)
  """
  def reward(y):
    y = tuple(y)
    ok = len(y) >= 2 and y[-1] == eos and y[-2] == answer
    return float(correct) if ok else float(incorrect)
  return reward


def length_penalty_reward(base: float = 0.0, per_token: float = 0.1) -> Callable[[tuple], float]:
  """r(y) = base − per_token · |y| (EOS counts as a token).

  Examples:
    >>> length_penalty_reward(1.0, 0.25)((3, 1, 0))
    0.25
  """
  return lambda y: float(base) - float(per_token) * len(tuple(y))
