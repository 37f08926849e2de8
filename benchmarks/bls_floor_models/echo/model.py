"""`echo_<ms>`: returns its input after computing for `hold_ms` (a busy loop on one core: a stand-in for a
stage's compute, exact to microseconds where a sleep overshoots by ~0.2 ms)."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json

        self.hold_s = float(json.loads(args["model_config"])["parameters"]["hold_ms"]["string_value"]) / 1000

    def execute(self, requests):
        until = time.perf_counter() + self.hold_s
        while time.perf_counter() < until:
            pass
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy().copy())])
            for r in requests
        ]
