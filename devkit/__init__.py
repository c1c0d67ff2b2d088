"""Tools for running Rastau without the outside world: the tests, the newcomer demo and the benchmarks use them."""
