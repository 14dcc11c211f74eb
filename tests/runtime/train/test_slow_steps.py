"""The contended-machine warning: exactly once, only after three steps in a row over twice the prediction."""

from runtime.train.slow_steps import SlowSteps


def test_warns_once_after_three_slow_steps_in_a_row():
    lines = []
    watch = SlowSteps(0.010, lines.append)
    # the first step allocates and is not counted; 0.020 is not over 2x
    times = [0.9, 0.025, 0.025, 0.012, 0.021, 0.030, 0.020, 0.5, 0.5, 0.5, 0.5]
    fired = [watch.observe(t, i - 1) for i, t in enumerate(times)]
    assert fired == [False] * 9 + [True, False]
    assert len(lines) == 1 and lines[0].startswith("warning: steps 7-9 took over 2x the predicted 10.00 ms")


def test_silent_without_a_prediction_or_when_fast():
    lines = []
    for predicted in (None, 0.0):
        watch = SlowSteps(predicted, lines.append)
        assert not any(watch.observe(1.0, i) for i in range(10))
    watch = SlowSteps(0.010, lines.append)
    assert not any(watch.observe(0.019, i) for i in range(10))
    assert lines == []
