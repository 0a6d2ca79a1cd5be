"""An mpmath reference (60 significant digits) for every `check` quantity and statement margin.

Independent of theory/ and of verify/numpy_reference.py: the formulas of THEORY.md written
literally (log Z, C₁ = E_w[log Z − E_d r/β], KL = Σ p log(p/q), ...) and evaluated in high
precision, where cancellation costs nothing. The float64 inputs are converted exactly and their
rows normalised in high precision (the toolkit treats rows as distributions).

Each quantity comes with its *condition scale*: the magnitude of its non-cancelling parts (the
value itself for sums of non-negative terms, e.g. KLs and C₁ at ρ = d; K + |E_d r − E_ρ r|/β
for C₁(β; ρ); Σ|terms| for rewards). A float64 result is right when it is within
``TOL_CONDITIONED × scale`` of the reference (tests/conftest.py), plus the reference's own
resolution, 10^−(DPS−8) × (1 + max|r|/β + max|log p|) (absolute): the literal formulas lose
digits to cancellation in high precision too, just far fewer.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

DPS = 60


def _rows(a):
  return [[mp.mpf(float(v)) for v in row] for row in np.asarray(a, np.float64)]


def _normalise(row):
  s = mp.fsum(row)
  return [v / s for v in row]


class Problem:
  """One instance in high precision (rows normalised), with an optional probe policy."""

  def __init__(self, w, d, ref, r, beta):
    with mp.workdps(2 * DPS):  # normalised to the precision of :meth:`margins`
      self.w = _normalise([mp.mpf(float(v)) for v in np.asarray(w, np.float64)])
      self.d = [_normalise(row) for row in _rows(d)]
      self.rho = [_normalise(row) for row in _rows(ref)]
      self.r = _rows(r)
      self.beta = mp.mpf(float(beta))
      self.nx, self.ny = len(self.d), len(self.d[0])

  # --- per-prompt building blocks --------------------------------------------------------------

  def log_z(self, x, beta=None, rho=None):
    beta = self.beta if beta is None else beta
    rho = self.rho[x] if rho is None else rho
    return mp.log(mp.fsum(p * mp.exp(v / beta) for p, v in zip(rho, self.r[x]) if p > 0))

  def tilt(self, x, beta=None, rho=None):
    beta = self.beta if beta is None else beta
    rho = self.rho[x] if rho is None else rho
    lz = self.log_z(x, beta, rho)
    return [p * mp.exp(v / beta - lz) if p > 0 else mp.mpf(0) for p, v in zip(rho, self.r[x])]

  @staticmethod
  def kl(p, q):
    return mp.fsum(a * mp.log(a / b) for a, b in zip(p, q) if a > 0)

  @staticmethod
  def mean(p, f):
    return mp.fsum(a * v for a, v in zip(p, f) if a > 0)

  def e_w(self, f):
    return mp.fsum(w * f(x) for x, w in enumerate(self.w))

  def c1(self, beta=None, sft=False):
    beta = self.beta if beta is None else beta
    return self.e_w(lambda x: self.log_z(x, beta, self.d[x] if sft else None)
                    - self.mean(self.d[x], self.r[x]) / beta)

  def beta_critical(self):
    if not hasattr(self, "_beta_critical"):
      self._beta_critical = self._find_beta_critical()
    return self._beta_critical

  def _find_beta_critical(self):
    """β_c with C₁(β_c; ρ) = 0 by bisection on log β in [−25, 25] (βC₁ is non-increasing), or None.

    A root needs E_w E_d r > E_w E_ρ r and E_w[max r − E_d r] > 0 (beyond the resolution) and a
    sign change inside the bracket.
    """
    res = self.resolution()
    gain = self.e_w(lambda x: self.mean(self.d[x], self.r[x]) - self.mean(self.rho[x], self.r[x]))
    head = self.e_w(lambda x: max(v for p, v in zip(self.rho[x], self.r[x]) if p > 0)
                    - self.mean(self.d[x], self.r[x]))
    if not (gain > res and head > res):
      return None
    g = lambda lb: mp.exp(lb) * self.c1(mp.exp(lb))
    lo, hi = mp.mpf(-25), mp.mpf(25)
    if not (g(lo) > 0 and g(hi) < 0):
      return None
    for _ in range(120):  # bracket width 50 / 2^120: far below float64's resolution
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
    return mp.exp((lo + hi) / 2)

  # --- every `check` quantity, with its condition scale ------------------------------------------

  def resolution(self):
    """The reference's absolute resolution (module docstring)."""
    with mp.workdps(DPS):
      return mp.mpf(10) ** (8 - DPS) * (
          1 + max(abs(v) for row in self.r for v in row) / self.beta
          + max(abs(mp.log(p)) for rows in (self.d, self.rho) for row in rows for p in row if p > 0))

  def quantities(self) -> dict:
    """{name: (value, condition scale)} (β_c: (value or None, value))."""
    with mp.workdps(DPS):
      out = {}
      b = self.beta
      pis = [self.tilt(x) for x in range(self.nx)]
      ent = self.e_w(lambda x: -mp.fsum(p * mp.log(p) for p in self.d[x] if p > 0))
      ce_rho = self.e_w(lambda x: -mp.fsum(p * mp.log(q) for p, q in zip(self.d[x], self.rho[x])
                                           if p > 0))
      ce_rl = self.e_w(lambda x: -mp.fsum(p * mp.log(q) for p, q in zip(self.d[x], pis[x])
                                          if p > 0))
      k_rho = self.e_w(lambda x: self.log_z(x) - self.mean(self.rho[x], self.r[x]) / b)
      gain = self.e_w(lambda x: abs(self.mean(self.d[x], self.r[x])
                                    - self.mean(self.rho[x], self.r[x])) / b)
      c1 = self.c1()
      out["sft_loss_data"] = (ent, ent)
      out["sft_loss_reference"] = (ce_rho, ce_rho)
      out["sft_loss_rl"] = (ce_rl, ce_rho + k_rho + gain)
      out["c1"] = (c1, k_rho + gain)
      c1_d = self.c1(sft=True)
      out["c1_sft_then_rl"] = (c1_d, c1_d)
      abs_r = lambda p, x: self.mean(p, [abs(v) for v in self.r[x]])
      out["rl_value"] = (b * self.e_w(self.log_z),
                         self.e_w(lambda x: abs_r(self.rho[x], x)) + b * k_rho)
      for name, pol in (("reward_reference", self.rho), ("reward_rl", pis), ("reward_data", self.d)):
        out[name] = (self.e_w(lambda x, pol=pol: self.mean(pol[x], self.r[x])),
                     self.e_w(lambda x, pol=pol: abs_r(pol[x], x)))
      kl_d_rho = self.e_w(lambda x: self.kl(self.d[x], self.rho[x]))
      out["regularized_reward_data"] = (out["reward_data"][0] - b * kl_d_rho,
                                        out["reward_data"][1] + b * kl_d_rho)
      kl_rl = self.e_w(lambda x: self.kl(pis[x], self.rho[x]))
      out["kl_rl_reference"] = (kl_rl, kl_rl)
      kl_dr = self.e_w(lambda x: self.kl(self.d[x], pis[x]))
      out["kl_data_rl"] = (kl_dr, kl_dr)
      supp = lambda x: [v for p, v in zip(self.d[x], self.r[x]) if p > 0]
      hb = self.e_w(lambda x: (max(supp(x)) - min(supp(x))) ** 2) / (8 * b ** 2)
      out["hoeffding_bound"] = (hb, hb)
      sb = self.e_w(lambda x: max(supp(x)) - self.mean(self.d[x], self.r[x])) / b
      out["sup_bound"] = (sb, sb)
      tv = self.e_w(lambda x: mp.fsum(abs(p - q) for p, q in zip(self.d[x], pis[x])) / 2)
      out["joint_tv"] = (tv, tv)
      slope, slope_abs, curv = mp.mpf(0), mp.mpf(0), mp.mpf(0)
      for x, w in enumerate(self.w):
        rho, d, r = self.rho[x], self.d[x], self.r[x]
        m = self.mean(rho, r)
        terms = [(q - p) * q * (v - m) for p, q, v in zip(d, rho, r) if q > 0]
        slope += w ** 2 * mp.fsum(terms)
        slope_abs += w ** 2 * mp.fsum(abs(t) for t in terms)
        md = self.mean(d, r)
        a = [p * (v - md) for p, v in zip(d, r)]
        ma = self.mean(d, a)
        curv += w ** 3 * mp.fsum(p * (v - ma) ** 2 for p, v in zip(d, a) if p > 0)
      out["initial_slope"] = (slope, slope_abs)
      out["initial_curvature"] = (curv, curv)
      out["beta_critical"] = self.beta_critical_scaled()
      return out

  def beta_critical_scaled(self):
    """(β_c or None, its condition scale β_c (1 + S_h / (t |h'(t)|))), t = 1/β_c.

    β_c is the root of h(t) = E_w[log E_ρ e^{t r} − t E_d r]; h is evaluated from terms of size
    S_h = E_w[K + t max|r − E_ρ r| + t Σ|d − ρ||r|], so a root is known to δt = u S_h / h'(t).
    """
    with mp.workdps(DPS):
      bc = self.beta_critical()
      if bc is None:
        return None, None
      t = 1 / bc
      slope = self.e_w(lambda x: self.mean(self.tilt(x, bc), self.r[x])
                       - self.mean(self.d[x], self.r[x]))

      def size(x):
        m = self.mean(self.rho[x], self.r[x])
        k = self.log_z(x, bc) - m * t
        spread = max(abs(v - m) for p, v in zip(self.rho[x], self.r[x]) if p > 0)
        return k + t * spread + t * mp.fsum(abs((p - q) * v) for p, q, v in
                                             zip(self.d[x], self.rho[x], self.r[x]))

      return bc, bc * (1 + self.e_w(size) / (t * abs(slope)))

  # --- exact margins of every statement at π₁ = π*_β(ρ), π₂ = d -------------------------------

  def margin_resolution(self):
    """Absolute resolution of :meth:`margins`: computed at 2·DPS digits, and square roots of
    KLs halve the digits of exact zeros (√ of the resolution)."""
    with mp.workdps(2 * DPS):
      return mp.sqrt(self.resolution() * mp.mpf(10) ** (-DPS))

  def margins(self) -> dict:
    """{statement name: exact margin} at probe π = d (as `check`), for the margins that are not
    identically zero (identities are exact: their exact margin is 0)."""
    with mp.workdps(2 * DPS):
      b = self.beta
      pis = [self.tilt(x) for x in range(self.nx)]
      c1_d = self.c1(sft=True)
      supp = lambda x: [v for p, v in zip(self.d[x], self.r[x]) if p > 0]
      out = {}
      out["C1 c1_nonnegative"] = c1_d
      out["C1 c1_positive_otherwise"] = c1_d
      out["C1 hoeffding_bound"] = (self.e_w(lambda x: (max(supp(x)) - min(supp(x))) ** 2)
                                   / (8 * b ** 2) - c1_d)
      headroom = self.e_w(lambda x: max(supp(x)) - self.mean(self.d[x], self.r[x]))
      out["C1 sup_bound"] = headroom / b - c1_d

      def var(x):
        m = self.mean(self.d[x], self.r[x])
        return self.mean(self.d[x], [(v - m) ** 2 for v in self.r[x]])

      lead = self.e_w(var) / (2 * b ** 2)
      rem = self.e_w(lambda x: (max(supp(x)) - min(supp(x))) ** 3) / (36 * mp.sqrt(3) * b ** 3)
      out["C1 large_beta_limit"] = rem - abs(c1_d - lead)
      mass = lambda x: mp.fsum(p for p, v in zip(self.d[x], self.r[x])
                               if p > 0 and v == max(supp(x)))
      out["C1 small_beta_limit"] = -b * self.e_w(lambda x: mp.log(mass(x))) - (headroom - b * c1_d)
      j1 = self.e_w(lambda x: self.mean(pis[x], self.r[x]))
      j2 = self.e_w(lambda x: self.mean(self.d[x], self.r[x]))
      kls = [max(mp.mpf(0), self.kl(self.d[x], pis[x])) for x in range(self.nx)]  # KL ≥ 0
      budget = self.e_w(lambda x: kls[x])
      r_max = max(abs(v) for x in range(self.nx) for v in self.r[x])
      out["C2 proposition_1"] = j1 + r_max * mp.sqrt(2 * budget) - j2
      spread = lambda x: max(self.r[x]) - min(self.r[x])
      out["C2 proposition_1_sharp"] = j1 + self.e_w(lambda x: spread(x) * mp.sqrt(kls[x] / 2)) - j2
      out["C3 theorem_4_1_as_printed"] = j1 - j2
      gain = self.e_w(lambda x: self.mean(self.d[x], self.r[x]) - self.mean(self.rho[x], self.r[x]))
      out["D1 rl_lowers_sft_needs_reward_gain"] = gain
      bc = self.beta_critical()
      if bc is not None:
        out["D1 critical_beta_sign"] = (mp.log(bc) - mp.log(b)) * b * self.c1()
      tv = self.e_w(lambda x: mp.fsum(abs(p - q) for p, q in zip(self.d[x], pis[x])) / 2)
      out["D3 joint_bound"] = mp.sqrt(budget / 2) - tv  # at π = d: ΔL = 0, ΔJ_β/β = KL(d‖π*)
      return out

  # --- both sides of the policy identities B1–B4 and D3 at a probe policy ------------------------

  def sides(self, log_pi) -> dict:
    """{statement name: (exact lhs, exact rhs)} of B1, B2, B3, B4 and D3 at the probe π given by
    its float64 log-probabilities [X, Y] (normalised here in high precision)."""
    with mp.workdps(2 * DPS):
      pi = []
      for row in np.asarray(log_pi, np.float64):
        pi.append(_normalise([mp.exp(mp.mpf(float(v))) if np.isfinite(v) else mp.mpf(0)
                              for v in row]))
      b = self.beta
      star = [self.tilt(x) for x in range(self.nx)]
      e = self.e_w
      ce = lambda p, q: -mp.fsum(a * mp.log(c) for a, c in zip(p, q) if a > 0)
      j = lambda pol: e(lambda x: self.mean(pol[x], self.r[x]))
      kl = lambda p, q: e(lambda x: self.kl(p[x], q[x]))
      out = {}
      out["B1 sft_excess_is_kl"] = (e(lambda x: ce(self.d[x], pi[x]) - ce(self.d[x], self.d[x])),
                                    kl(self.d, pi))
      out["B2 gibbs_variational"] = (j(pi) - b * kl(pi, self.rho),
                                     b * e(self.log_z) - b * kl(pi, star))
      out["B3 sft_loss_after_rl"] = (e(lambda x: ce(self.d[x], star[x]) - ce(self.d[x], self.rho[x])),
                                     self.c1())
      out["B4 reward_change_after_rl"] = (j(pi) - j(star),
                                          b * (-kl(pi, star) + kl(pi, self.rho) - kl(star, self.rho)))
      tv = e(lambda x: mp.fsum(abs(p - q) for p, q in zip(self.d[x], star[x])) / 2)
      out["D3 joint_bound"] = (mp.sqrt(max(0, kl(self.d, pi)) / 2)
                               + mp.sqrt(max(0, kl(pi, star)) / 2), tv)
      return out
