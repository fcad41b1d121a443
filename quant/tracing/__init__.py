"""Models that do not trace as a whole, quantized by their largest traceable submodules."""

from quantstage.quant.tracing.plan import FloatModule, TracingPlan, plan_submodules
from quantstage.quant.tracing.report import SubmoduleCoverage, SubmoduleRow, float_time_share
from quantstage.quant.tracing.reroot import spec_for_submodule

__all__ = [
    "FloatModule",
    "SubmoduleCoverage",
    "SubmoduleRow",
    "TracingPlan",
    "float_time_share",
    "plan_submodules",
    "spec_for_submodule",
]
