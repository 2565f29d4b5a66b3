from pneumoscan.workflows.bench import FMA_PIPES, machine


def test_machine_names_the_cpu_and_states_the_peak_formula():
    m = machine()
    assert m["cores"] >= 1 and m["torch"] and m["onnxruntime"]
    expected = m["cores"] * m["clock_ghz"] * m["fp32_lanes"] * 2 * FMA_PIPES
    assert abs(m["peak_fp32_gflops"] - expected) <= 0.01 * expected + 0.1
    assert f"{m['fp32_lanes']} fp32 lanes" in m["peak_formula"]
