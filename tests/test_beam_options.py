"""Tests of the one rule for Beam options on Distillery's command lines."""

from pipelines import beam_options


def test_positional_arguments_stop_at_the_first_option():
    # absl drops `--`: `distillery-benchmark a.tflite b.tflite -- --project p --runner=DataflowRunner`
    positional, beam_args = beam_options.split_argv(
        ["a.tflite", "b.tflite", "--project", "p", "--runner=DataflowRunner"], "")
    assert positional == ["a.tflite", "b.tflite"]
    assert beam_args == ["--project", "p", "--runner=DataflowRunner"]


def test_options_string_is_split_like_a_shell_and_keeps_commas():
    positional, beam_args = beam_options.split_argv(
        ["--", "--region=us-central1"], "--experiments=use_runner_v2,no_use_multiple_sdk_containers --labels='a b'")
    assert positional == []
    assert beam_args == ["--experiments=use_runner_v2,no_use_multiple_sdk_containers", "--labels=a b",
                         "--region=us-central1"]
