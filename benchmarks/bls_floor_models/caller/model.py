"""`caller`: makes `calls` BLS requests to `target` with a `[2, 4, side, side]` tensor; each call's seconds."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            target = _scalar(request, "target").decode()
            side = int(_scalar(request, "side"))
            sample = np.ones((2, 4, side, side), np.float32)
            seconds = []
            for _ in range(int(_scalar(request, "calls"))):
                started = time.perf_counter()
                bls = pb_utils.InferenceRequest(
                    model_name=target, inputs=[pb_utils.Tensor("x", sample)], requested_output_names=["y"]
                )
                result = bls.exec()
                if result.has_error():
                    raise pb_utils.TritonModelException(result.error().message())
                pb_utils.get_output_tensor_by_name(result, "y").as_numpy()
                seconds.append(time.perf_counter() - started)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("seconds", np.array(seconds))]))
        return responses
