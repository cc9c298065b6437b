"""Method benchmark: every pruning method from one cached baseline, at one MACs target.

Run ``python -m benchmarks.methods.run benchmarks/methods/configs/cpu.yaml`` from the repository
root, then ``python -m benchmarks.methods.report benchmarks/methods/configs/cpu.yaml``.
See ``benchmarks/methods/README.md``.
"""
