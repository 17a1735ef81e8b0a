"""Numbers into verdicts: compare (statistics, the three modes), oracle (float64, floors), precision, trust (is
there anything to judge), notes (what a pair's numbers mean)."""
