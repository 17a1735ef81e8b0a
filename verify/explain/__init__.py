"""Why two models differ: equivalence in float64, structure, tracers, first divergence (localize), each layer's own
error (isolate), the smallest failing piece (reduce)."""
