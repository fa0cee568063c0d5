"""Placeholder until the benchmark lands."""


def add_bench_parser(commands):
    pass
