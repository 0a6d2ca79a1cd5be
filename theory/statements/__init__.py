"""Every statement the toolkit checks, one module per subject; each returns sides and a margin.

- :mod:`.identities`: B1-B5 (exact identities).
- :mod:`.sft_then_rl`: C1, Theorem 3.1 (paper) with the bounds and asymptotes beside it (ours).
- :mod:`.rl_then_sft`: C2 Proposition 1 (paper), C3 Theorem 4.1 as printed (paper, false),
  C4 its repair (ours).
- :mod:`.critical_beta` (D1), :mod:`.initial_rates` (D2), :mod:`.joint_bound` (D3),
  :mod:`.pl` (D5), :mod:`.spectral` (D6), :mod:`.rl_duration` (D7): this project's results.
"""
