"""Method plugins. Importing this package registers every built-in method."""
from bench.methods.base import METHODS, BatchSum, Method, Param, TrainContext, create_method, list_methods, register_method
from bench.methods import baselines  # noqa: F401  (registers dense, static, random)
from bench.methods import dynamicvit  # noqa: F401  (registers dynamicvit)
from bench.methods import token_pooling  # noqa: F401  (registers token_pooling, importance, grid_pool)
from bench.methods import svite  # noqa: F401  (registers svite, s2vite, svite_plus)

__all__ = ["METHODS", "BatchSum", "Method", "Param", "TrainContext", "create_method", "list_methods", "register_method"]
